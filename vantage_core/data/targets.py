"""What a model writes SQL as (``data.target``), as one object per format: :class:`TokenTarget`
(``tokens``: subword tokens after a prompt of question and schema text) and :class:`ActionTarget`
(``actions``: keywords, pointers at schema items and copied question pieces).

    target = target_format(cfg.data)         # the one place data.target is read
    splits = target.training_splits(cfg, preparation)
    batch = target.batch(splits.train, rows, splits.vocab)
    request = target.request(example, vocab, model)    # its prompt, and how output ids become SQL

A format knows how to prepare and cache a split (through the one pipeline,
:func:`vantage_core.data.pipeline.prepare_split`, with its :class:`RowEncoder`), how rows become a
batch, how a question becomes a decoding request and output ids become SQL, and how a gold example
is read teacher-forced (the expert atlas). Callers ask it; none of them tests the format's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np

from vantage_core.data.example import Example
from vantage_core.data.pipeline import PreparedSplit, SplitData, TokenRows, encode_example, load_split, prepare_split
from vantage_core.errors import ConfigError


@dataclass
class Request:
    """One question made ready for decoding: the example, the decoder's prompt ids, the
    featurized question (pointer models: the schema encoder's and the constraint's input) or
    the encoder's schema text (token models), and how output ids become SQL."""

    example: Example
    prompt: list[int]
    features: dict | None
    encoder_text: str | None
    to_sql: Callable[[list[int]], str]
    to_tokens: Callable[[list[int]], list[str]]  # what each output id writes (the routing view's labels)


@dataclass
class TeacherForced:
    """One example with its gold output as the decoder's inputs: where the output starts among
    the inputs, the SQL role of each output piece, and the format's encoding of the example."""

    example: Example
    sort_key: tuple  # examples read together sort by it (little padding)
    start: int
    pieces: list  # one vantage_core.data.sql_roles.PieceRole per output piece
    encoded: dict


@dataclass
class Preparation:
    """How a run prepares its splits: the registry, the folder of the run's vocabulary (read when
    it is there, trained and saved otherwise), where progress is said, and ``first``: runs a step
    on the process that fills the caches before the others (rank 0 of a data-parallel run)."""

    registry: Any
    vocabulary_dir: Path
    say: Callable[[str], None] = lambda *_: None
    first: Callable[[Callable[[], Any]], Any] = lambda step: step()
    validation: bool = True  # prepare the validation split too (its scores are rank 0's)
    progress: bool = True


@dataclass
class TrainingSplits:
    """The decoder's vocabulary (a tokenizer, or the action vocabulary) and the prepared splits."""

    vocab: Any
    train: PreparedSplit
    validation: PreparedSplit | None


class TargetFormat:
    """One value of ``data.target``: how its examples are prepared, batched, asked and read back."""

    name: ClassVar[str]
    output_space: ClassVar[str]  # what the decoder's output is, for messages ("writes SQL text ...")
    writes: ClassVar[str]  # how the model writes SQL, for its model card
    # Validation during training decodes and executes SQL (True), or reads the gold outputs
    # teacher-forced (False: cheap, action_exact and heldout_ce).
    decodes_validation: ClassVar[bool]

    def __init__(self, data_cfg: Any):
        self.data_cfg = data_cfg

    def rows(self, tokenizer: Any, registry: Any = None, max_seq_len: int | None = None) -> Any:
        """The :class:`~vantage_core.data.pipeline.RowEncoder` of this format, reading ``tokenizer``."""
        raise NotImplementedError

    def prepare(self, slot: str, tokenizer: Any, *, registry: Any = None, cache: bool = True,
                echo: Callable[[str], None] | None = None, split: SplitData | None = None, progress: bool = True,
                max_seq_len: int | None = None) -> PreparedSplit:
        """One slot encoded in this format's rows, cached by content (:func:`prepare_split`)."""
        return prepare_split(self.data_cfg, slot, self.rows(tokenizer, registry, max_seq_len), registry=registry,
                             cache=cache, echo=echo, split=split, progress=progress)

    def training_splits(self, cfg: Any, prep: Preparation) -> TrainingSplits:
        """The vocabulary and the prepared train (and validation) splits of the run ``cfg`` describes."""
        raise NotImplementedError

    def batch(self, split: PreparedSplit, rows: np.ndarray, vocab: Any) -> dict[str, Any]:
        """Rows ``rows`` of ``split`` as one padded host-side batch, as evaluation reads it."""
        raise NotImplementedError

    def training_batches(self, split: PreparedSplit, vocab: Any, seed: int) -> Callable[..., dict[str, Any]]:
        """``collate(rows, index=0)``: rows of the training split as the ``index``-th training batch."""
        return lambda rows, index=0: self.batch(split, rows, vocab)

    def request(self, example: Example, vocab: Any, model: Any) -> Request:
        """What decoding needs for one question (``example`` without SQL), built as in training."""
        raise NotImplementedError

    def host_batch(self, requests: list[Request], vocab: Any) -> dict[str, Any]:
        """The host-side batch the schema encoder reads for these requests (one row each)."""
        raise NotImplementedError

    def output_spaces(self, requests: list[Request]) -> list[tuple[int, int]] | None:
        """Per request, the sizes of its own output spaces besides the vocabulary (None: none)."""
        return None

    def teacher_forced(self, example: Example, vocab: Any, model: Any) -> TeacherForced | str:
        """``example`` with its gold output as inputs, or why it cannot be read (a short reason)."""
        raise NotImplementedError

    def teacher_forced_batch(self, golds: list[TeacherForced], vocab: Any) -> tuple[np.ndarray, dict[str, Any]]:
        """The input ids (B, T) of ``golds`` and the host-side batch their schema encoder reads."""
        raise NotImplementedError

    def codec_check(self, cfg: Any, vocab: Any, registry: Any) -> Callable[[Example], str | None]:
        """``problem(example)``: why the model ``cfg`` describes (with ``vocab``) cannot learn to write
        ``example.sql`` in this format (a sentence), or None when it can."""
        raise NotImplementedError


def trained_vocabulary(prep: Preparation, spec: Any, corpus: Callable[[], Iterable[str]],
                       note: str | None = None) -> Any:
    """The run's vocabulary: the one saved in ``prep.vocabulary_dir``, or the tokenizer plugin
    ``spec`` names trained on ``corpus()`` and saved there (saying ``note`` first)."""
    from vantage_core.config import plugin_params
    from vantage_core.data.tokenizer import load_tokenizer

    if (prep.vocabulary_dir / "tokenizer.json").exists():
        return load_tokenizer(prep.vocabulary_dir, prep.registry)
    tokenizer = prep.registry.build("tokenizer", spec.name, **plugin_params(spec))
    if note:
        prep.say(note)
    return tokenizer.train(corpus(), prep.vocabulary_dir)


def validation_split(target: TargetFormat, cfg: Any, prep: Preparation, tokenizer: Any) -> PreparedSplit | None:
    """The prepared validation split, where the config has one and ``prep`` asks for it."""
    if not (cfg.data.validation and prep.validation):
        return None
    return target.prepare("validation", tokenizer, registry=prep.registry, echo=prep.say, progress=prep.progress)


# ---------------------------------------------------------------------------- data.target: tokens

class TokenTarget(TargetFormat):
    """``tokens``: the decoder writes SQL as subword tokens after ``<bos> question <sep> schema <sql>``."""

    name = "tokens"
    output_space = "writes SQL text (data.target: tokens)"
    writes = "as subword tokens"
    decodes_validation = True

    def rows(self, tokenizer: Any, registry: Any = None, max_seq_len: int | None = None) -> TokenRows:
        return TokenRows(tokenizer, self.data_cfg.serialization, max_seq_len)

    def training_splits(self, cfg: Any, prep: Preparation) -> TrainingSplits:
        """A tokenizer trained on the training corpus (unless saved), then the splits tokenized."""
        from vantage_core.data.pipeline import tokenizer_corpus

        loaded = prep.first(lambda: load_split(cfg.data, "train", prep.registry, prep.say))
        note = f"training the {cfg.data.tokenizer.name} tokenizer on {len(loaded.examples)} examples"
        vocab = prep.first(lambda: trained_vocabulary(
            prep, cfg.data.tokenizer, lambda: list(tokenizer_corpus(loaded, cfg.data.serialization)), note))
        train = prep.first(lambda: self.prepare("train", vocab, registry=prep.registry, echo=prep.say, split=loaded,
                                                progress=prep.progress, max_seq_len=cfg.model.max_seq_len))
        return TrainingSplits(vocab, train, validation_split(self, cfg, prep, vocab))

    def batch(self, split: PreparedSplit, rows: np.ndarray, vocab: Any) -> dict[str, Any]:
        from vantage_core.data.batching import make_batch

        return make_batch(split, rows, vocab.pad_id)

    def request(self, example: Example, vocab: Any, model: Any) -> Request:
        enc = encode_example(example, vocab, self.data_cfg.serialization)
        return Request(example, list(enc["tokens"][:enc["sql_start"] + 1]), None, enc["encoder_text"],
                       lambda ids: vocab.decode(ids).strip(), lambda ids: [vocab.decode([t]) for t in ids])

    def host_batch(self, requests: list[Request], vocab: Any) -> dict[str, Any]:
        return {"encoder_texts": [r.encoder_text for r in requests]}

    def teacher_forced(self, example: Example, vocab: Any, model: Any) -> TeacherForced | str:
        from vantage_core.data.sql_roles import piece_roles

        enc = encode_example(example, vocab, self.data_cfg.serialization)
        max_len = getattr(getattr(model, "args", None), "max_seq_len", None)
        if max_len and enc["length"] > max_len:
            return "longer than max_seq_len"
        start = enc["sql_start"] + 1
        try:
            pieces = piece_roles(vocab, example.sql, example.schema, ids=enc["tokens"][start:start + enc["n_sql"]])
        except ValueError:
            return "SQL pieces do not match the tokenizer"
        return TeacherForced(example, (enc["length"],), start, pieces, enc)  # the SQL tokens, as inputs

    def codec_check(self, cfg: Any, vocab: Any, registry: Any) -> Callable[[Example], str | None]:
        """The SQL must fit ``max_sql_tokens``, and question, schema and SQL ``model.max_seq_len``."""
        ser, max_len = cfg.data.serialization, cfg.model.max_seq_len

        def problem(example: Example) -> str | None:
            encoded = encode_example(example, vocab, ser)
            if encoded["sql_truncated"]:
                return (f"the SQL is longer than the model writes (data.serialization.max_sql_tokens "
                        f"{ser.max_sql_tokens} tokens)")
            if encoded["length"] > max_len + 1:
                return f"question, schema and SQL are longer than the model reads (model.max_seq_len {max_len})"
            return None

        return problem

    def teacher_forced_batch(self, golds: list[TeacherForced], vocab: Any) -> tuple[np.ndarray, dict[str, Any]]:
        T = max(g.encoded["length"] for g in golds)
        tokens = np.full((len(golds), T), vocab.pad_id, dtype=np.int32)
        for b, g in enumerate(golds):
            tokens[b, :g.encoded["length"]] = g.encoded["tokens"]
        return tokens, {"encoder_texts": [g.encoded["encoder_text"] for g in golds]}


# ---------------------------------------------------------------------------- data.target: actions

class ActionTarget(TargetFormat):
    """``actions``: the decoder writes SQL keywords, points at schema items and copies question
    pieces (:mod:`vantage_core.data.sql_actions`), reading the featurized question and schema."""

    name = "actions"
    output_space = "points at schema items (data.target: actions)"
    writes = "as actions: keywords, pointers to schema items and copied question spans"
    decodes_validation = False

    def __init__(self, data_cfg: Any):
        super().__init__(data_cfg)
        self._linker = None  # built once, from the default registry, for requests

    def linker(self, registry: Any = None) -> Any:
        """The ``schema_linker`` plugin ``data.linker`` names (``registry``'s, else the default one's)."""
        from vantage_core.config import plugin_params

        if registry is not None:
            return registry.build("schema_linker", self.data_cfg.linker.name, **plugin_params(self.data_cfg.linker))
        if self._linker is None:
            from vantage_core.plugins import registry as default_registry

            self._linker = self.linker(default_registry())
        return self._linker

    def rows(self, tokenizer: Any, registry: Any = None, max_seq_len: int | None = None) -> Any:
        from vantage_core.data.actions import ActionRows
        from vantage_core.plugins import registry as default_registry

        return ActionRows(tokenizer, self.linker(registry or default_registry()), self.data_cfg.linker)

    def training_splits(self, cfg: Any, prep: Preparation) -> TrainingSplits:
        """The splits featurized with the schema encoder's question tokenizer, then the action
        vocabulary learned from the training SQL (unless saved)."""
        from vantage_core.data.actions import vocab_corpus

        question_tokenizer = self.question_tokenizer(cfg, prep.registry)
        loaded = prep.first(lambda: load_split(cfg.data, "train", prep.registry, prep.say))
        train = prep.first(lambda: self.prepare("train", question_tokenizer, registry=prep.registry, echo=prep.say,
                                                split=loaded, progress=prep.progress))
        vocab = prep.first(lambda: trained_vocabulary(prep, cfg.data.tokenizer, lambda: vocab_corpus(train)))
        wrong = [t for t in set(vocab_corpus(train)) if len(vocab.encode(t)) != 1][:3]
        if wrong:
            raise ConfigError(f"data.tokenizer: {cfg.data.tokenizer.name!r} does not give one id per SQL action "
                              f"({wrong}); data.target: actions needs an action vocabulary (name: sql_actions)")
        return TrainingSplits(vocab, train, validation_split(self, cfg, prep, question_tokenizer))

    @staticmethod
    def question_tokenizer(cfg: Any, registry: Any) -> Any:
        """The tokenizer of the schema encoder's question pieces (a question-aware encoder's)."""
        from vantage_core.config import plugin_params

        spec = cfg.model.schema_encoder
        encoder = registry.build("schema_encoder", spec.name, cfg.model.d_model, None, **plugin_params(spec))
        if not hasattr(encoder, "question_tokenizer"):
            raise ConfigError(f"model.schema_encoder: {spec.name!r} has no question_tokenizer; data.target: actions "
                              f"needs a question-aware encoder (linked)")
        return encoder.question_tokenizer

    def batch(self, split: PreparedSplit, rows: np.ndarray, vocab: Any) -> dict[str, Any]:
        from vantage_core.data.actions import collate_rows

        return collate_rows(split, rows, vocab)

    def training_batches(self, split: PreparedSplit, vocab: Any, seed: int) -> Callable[..., dict[str, Any]]:
        """Training batches: ``data.link_dropout`` hides some name matches (drawn from ``seed`` and the batch)."""
        from vantage_core.data.actions import collate_rows

        dropout = self.data_cfg.link_dropout
        return lambda rows, index=0: collate_rows(split, rows, vocab, dropout, seed, index)

    def request(self, example: Example, vocab: Any, model: Any) -> Request:
        from vantage_core.data.actions import featurize_request
        from vantage_core.data.linking import cased_values, schema_items
        from vantage_core.data.notes import value_meanings

        items = schema_items(example.schema)
        feats = featurize_request(example, model.schema_encoder.question_tokenizer, self.linker(), items)
        values = cased_values(example.db_paths[0]) if example.db_paths else None
        meanings = value_meanings(example.schema)
        if meanings:  # a question's "discontinued" is written as the stored value its notes give
            values = {**meanings, **(values or {})}
        reader = ActionReader(example, items, feats, vocab, values)
        return Request(example, [vocab.bos_id], feats, None, reader.sql, reader.pieces)

    def host_batch(self, requests: list[Request], vocab: Any) -> dict[str, Any]:
        from vantage_core.data.actions import collate

        return collate([r.features for r in requests], [r.example for r in requests], vocab, with_targets=False)

    def output_spaces(self, requests: list[Request]) -> list[tuple[int, int]] | None:
        """Per request, its schema items and its question pieces (the pointer and copy heads' outputs)."""
        return [(len(r.features["item_texts"]), len(r.features["q_ids"])) for r in requests]

    def teacher_forced(self, example: Example, vocab: Any, model: Any) -> TeacherForced | str:
        from vantage_core.data.actions import featurize_request
        from vantage_core.data.linking import schema_items
        from vantage_core.data.sql_roles import action_roles

        feats = featurize_request(example, model.schema_encoder.question_tokenizer, self.linker())
        if feats["actions"] is None:
            return f"SQL the action codec cannot express: {feats['codec_error']}"[:80]
        pieces = action_roles(feats["actions"], schema_items(example.schema))
        # each action as an input, after <s>
        return TeacherForced(example, (len(feats["item_texts"]), len(feats["actions"])), 1, pieces, feats)

    def codec_check(self, cfg: Any, vocab: Any, registry: Any) -> Callable[[Example], str | None]:
        """The action codec must express the SQL, with keywords and literals ``vocab`` has."""
        from vantage_core.data.actions import featurize_request
        from vantage_core.data.sql_actions import UNK_LIT, VOCAB

        question_tokenizer, linker = self.question_tokenizer(cfg, registry), self.linker(registry)
        unknown = vocab.encode(UNK_LIT)

        def problem(example: Example) -> str | None:
            features = featurize_request(example, question_tokenizer, linker)
            if features["actions"] is None:
                return f"the action codec cannot express this SQL ({features['codec_error']})"
            missing = sorted({repr(str(v)) for kind, v in features["actions"] if kind == VOCAB and vocab.encode(v) == unknown})
            if missing:
                return (f"the model's action vocabulary has no {', '.join(missing[:4])}: it writes the keywords and the "
                        f"literals it was trained on, and copies other values from the question (spell them there)")
            return None

        return problem

    def teacher_forced_batch(self, golds: list[TeacherForced], vocab: Any) -> tuple[np.ndarray, dict[str, Any]]:
        from vantage_core.data.actions import collate

        host = collate([g.encoded for g in golds], [g.example for g in golds], vocab)
        return host["tokens"], host


@dataclass
class ActionReader:
    """How a pointer model's output ids read for one request: the SQL they render, and what
    each action writes (the routing view's labels)."""

    example: Example
    items: list
    feats: dict
    vocab: Any
    values: dict | None  # the database's cased values (and the notes' meanings) that copied spans match

    def sql(self, ids: list[int]) -> str:
        from vantage_core.data.actions import to_actions
        from vantage_core.data.sql_actions import render_sql

        return render_sql(to_actions(ids, self.vocab, len(self.items)), self.items, self.example.question,
                          self.feats["offsets"], self.values)

    def pieces(self, ids: list[int]) -> list[str]:
        from vantage_core.data.actions import to_actions
        from vantage_core.data.sql_actions import ITEM, QUESTION

        out = []
        for kind, value in to_actions(ids, self.vocab, len(self.items)):
            if kind == ITEM:
                it = self.items[value]
                out.append(it.table if it.column is None else f"{it.table}.{it.column}")
            elif kind == QUESTION:
                s, e = self.feats["offsets"][value]
                out.append(self.example.question[s:e])
            else:
                out.append(str(value))
        return out


TARGET_FORMATS: dict[str, type[TargetFormat]] = {t.name: t for t in (TokenTarget, ActionTarget)}


def target_format(data_cfg: Any) -> TargetFormat:
    """The format ``data_cfg.target`` names (the one place that reads it)."""
    if data_cfg.target not in TARGET_FORMATS:
        raise ConfigError(f"data.target: {data_cfg.target!r}; valid: {', '.join(TARGET_FORMATS)}")
    return TARGET_FORMATS[data_cfg.target](data_cfg)


def output_space(name: str) -> str | None:
    """What the decoder of a model with ``data.target: name`` outputs, in words (None: no such format)."""
    known = TARGET_FORMATS.get(name)
    return known.output_space if known else None
