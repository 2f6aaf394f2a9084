"""The decoder's tokenizer: a protocol, and a SentencePiece model trained on the corpus.

The decoder reads ``<bos> question <sep> schema <sql> SQL <eos>``; the section markers are
single pieces of their own (``SEP``, ``SQL``, ``EVIDENCE``), so a prompt can be assembled from
separately encoded parts and the start of the SQL found by id.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Iterable, Protocol, runtime_checkable

from vantage_core.errors import DataError

# Section markers of the prompt: one piece each, never split by the tokenizer.
SEP = "<sep>"  # between the question and the schema
SQL = "<sql>"  # the SQL starts after this
EVIDENCE = "<ev>"  # BIRD's external knowledge, after the question
MARKERS = (SEP, SQL, EVIDENCE)

META_FILE = "tokenizer.json"  # which registered tokenizer wrote the folder, and its parameters


@runtime_checkable
class Tokenizer(Protocol):
    """What the decoder, the batcher and the schema encoder need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def train(self, texts: Iterable[str], out_dir: str | os.PathLike | None = None,
              vocab_size: int | None = None) -> "Tokenizer":
        """Learn the vocabulary from ``texts``; save to ``out_dir`` when given."""

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without bos/eos."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special ids (pad, bos, eos, markers) are dropped."""

    def marker_id(self, marker: str) -> int:
        """The id of a section marker (:data:`SEP`, :data:`SQL`, :data:`EVIDENCE`)."""

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write everything needed to :meth:`load` it again into ``out_dir``."""


class SentencePieceTokenizer:
    """A SentencePiece model (BPE by default) with byte fallback, so every text encodes.

    Ids: 0 pad, 1 unk, 2 bos, 3 eos, then the section markers, then the learned pieces. Digits
    are split one per piece (values are copied from the question digit by digit), and
    whitespace is kept as is (identity normalization), so SQL round-trips.
    """

    name = "sentencepiece"

    # BPE by default: on small SQL corpora the unigram trainer, with byte fallback and a soft
    # vocabulary limit, kept `▁S E L E C T` as six pieces where BPE learns `▁SELECT`.
    def __init__(self, vocab_size: int = 2048, model_type: str = "bpe",
                 character_coverage: float = 1.0, model_file: str | None = None):
        if model_type not in ("unigram", "bpe"):
            raise DataError(f"sentencepiece model_type {model_type!r}: valid are unigram, bpe")
        self.requested_vocab_size = int(vocab_size)
        self.model_type = model_type
        self.character_coverage = character_coverage
        self._sp = None
        self._marker_ids: dict[str, int] = {}
        if model_file:
            self._load_model(Path(model_file).read_bytes())

    # -- training ---------------------------------------------------------------------------
    def train(self, texts: Iterable[str], out_dir: str | os.PathLike | None = None,
              vocab_size: int | None = None) -> "SentencePieceTokenizer":
        """Train on ``texts`` (questions, SQL, schema text); save to ``out_dir`` when given."""
        import sentencepiece as spm

        corpus = [t for t in texts if t and t.strip()]
        if not corpus:
            raise DataError("tokenizer training: the corpus is empty (no questions, SQL or schema text)")
        if vocab_size is not None:
            self.requested_vocab_size = int(vocab_size)
        # Byte fallback needs 256 byte pieces beside every character seen: below that floor
        # sentencepiece refuses to train, so the floor wins over a smaller request.
        n_chars = len(set().union(*map(set, corpus)))
        vocab = max(self.requested_vocab_size, 4 + len(MARKERS) + 256 + n_chars + 8)
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus), model_writer=model,
            vocab_size=vocab, model_type=self.model_type,
            character_coverage=self.character_coverage,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=list(MARKERS),
            byte_fallback=True, split_digits=True, normalization_rule_name="identity",
            remove_extra_whitespaces=False, hard_vocab_limit=False,  # small corpora: a smaller vocab is fine
            max_sentence_length=16384, num_threads=2, minloglevel=2,
            input_sentence_size=2_000_000, shuffle_input_sentence=True)
        self._load_model(model.getvalue())
        if out_dir is not None:
            self.save(out_dir)
        return self

    def _load_model(self, proto: bytes) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        self._proto = proto
        self._marker_ids = {m: self._sp.piece_to_id(m) for m in MARKERS}

    @property
    def sp(self):
        if self._sp is None:
            raise DataError("the sentencepiece tokenizer is not trained yet: run `vantage tokenizer train` "
                            "or call .train(texts) / SentencePieceTokenizer.load(dir)")
        return self._sp

    # -- the Tokenizer protocol ---------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    pad_id = property(lambda self: 0)
    unk_id = property(lambda self: 1)
    bos_id = property(lambda self: 2)
    eos_id = property(lambda self: 3)

    def marker_id(self, marker: str) -> int:
        self.sp  # noqa: B018  (raises when untrained)
        try:
            return self._marker_ids[marker]
        except KeyError:
            raise DataError(f"unknown marker {marker!r}; markers: {', '.join(MARKERS)}") from None

    @property
    def special_ids(self) -> set[int]:
        return {self.pad_id, self.bos_id, self.eos_id, *self._marker_ids.values()}

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        special = self.special_ids
        return self.sp.decode([int(i) for i in ids if int(i) not in special])

    def id_to_piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    # -- persistence ---------------------------------------------------------------------------
    def save(self, out_dir: str | os.PathLike) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.sp  # noqa: B018
        (out / "tokenizer.model").write_bytes(self._proto)
        meta = {"name": self.name, "params": {"vocab_size": self.requested_vocab_size,
                                              "model_type": self.model_type,
                                              "character_coverage": self.character_coverage},
                "vocab_size": self.vocab_size, "markers": self._marker_ids}
        (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "SentencePieceTokenizer":
        d = Path(directory)
        model = d / "tokenizer.model"
        if not model.is_file():
            raise DataError(f"{model}: no sentencepiece model here; train one with `vantage tokenizer train`")
        params = {}
        if (d / META_FILE).is_file():
            params = json.loads((d / META_FILE).read_text()).get("params", {})
        return cls(**params, model_file=str(model))

    def fingerprint(self) -> str:
        """A hash of the trained model, for cache keys."""
        import hashlib

        self.sp  # noqa: B018
        return hashlib.sha1(self._proto).hexdigest()[:16]


def load_tokenizer(directory: str | os.PathLike, registry=None) -> Tokenizer:
    """Load a saved tokenizer with the plugin that wrote it (named in ``tokenizer.json``)."""
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; this folder holds no saved tokenizer "
                        f"(train one with `vantage tokenizer train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{meta_path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if registry is None:
        from vantage_core.plugins import registry as default_registry
        registry = default_registry()
    factory = registry.get("tokenizer", meta["name"]).factory
    if hasattr(factory, "load"):
        return factory.load(d)
    tok = factory(**meta.get("params", {}))
    tok.load(d)
    return tok
