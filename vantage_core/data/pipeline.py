"""From a DataConfig to tokenized splits: load each source through the registry, mix them with
weights, serialize and tokenize every example once, and cache the result with ``datasets``.

    prepared = prepare_split(cfg.data, "train", tokenizer, max_seq_len=cfg.model.max_seq_len)
    for batch in train_batches(prepared, batch_size=16, seed=0): ...

A prepared split keeps, per example, the token ids of ``<bos> question <sep> schema <sql> SQL
<eos>``, the position of ``<sql>``, the encoder's schema text, and the :class:`Example` itself
(for execution and metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from vantage_core.data.example import Example, LoadReport
from vantage_core.data.serialize import serialize_for, question_text
from vantage_core.data.tokenizer import SEP, SQL, Tokenizer
from vantage_core.errors import DataError

PREPARE_VERSION = 1  # bump when the encoding below changes, so caches are rebuilt


@dataclass
class SourceReport:
    """What one source of a split gave."""

    name: str
    split: str
    weight: float
    loaded: int  # examples the adapter gave (after ``limit``)
    skipped: dict[str, int]  # by the adapter, reason -> count
    summary: str
    details: list[str] = field(default_factory=list)
    kept: int = 0  # examples left after encoding (too long ones dropped)
    dropped: dict[str, int] = field(default_factory=dict)  # by encoding, reason -> count

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "details"}


@dataclass
class SplitData:
    """The examples of one slot (train / validation / test) from all its sources."""

    slot: str
    examples: list[Example]
    source_index: list[int]  # per example: which source gave it
    sources: list[SourceReport]


def default_cache_dir(data_cfg: Any = None) -> Path:
    configured = getattr(data_cfg, "cache_dir", None)
    return Path(configured or os.environ.get("VANTAGE_CACHE") or Path.home() / ".cache" / "vantage")


def load_source(spec: Any, slot: str, registry: Any = None) -> tuple[LoadReport, str]:
    """Build the adapter a :class:`vantage_core.config.DataSource` names and load its split.
    Returns the report and the split read (the spec's own ``split``, or ``slot``)."""
    from vantage_core.config import plugin_params

    if registry is None:
        from vantage_core.plugins import registry as default_registry
        registry = default_registry()
    adapter = registry.build("dataset", spec.name, **plugin_params(spec))
    split = getattr(spec, "split", None) or slot
    if split not in adapter.splits:
        raise DataError(f"dataset {spec.name!r} has no split {split!r}; its splits: {', '.join(adapter.splits)} "
                        f"(set `split:` on the source to choose one)")
    report = adapter.load(split)
    limit = getattr(spec, "limit", None)
    if limit is not None:
        report.examples = report.examples[:limit]
    report.examples = sampled(report.examples, getattr(spec, "sample", None), f"{spec.name}/{split}")
    for i, ex in enumerate(report.examples):
        ex.source = ex.source or spec.name
        ex.id = ex.id or f"{spec.name}/{split}/{i}"
    return report, split


def sampled(examples: list[Example], n: int | None, stream: str) -> list[Example]:
    """``n`` of ``examples`` drawn at random (in their own order), the same ones every time for
    the same ``stream`` name; all of them where ``n`` is None or not below their number."""
    if n is None or n >= len(examples):
        return examples
    keep = sorted(random.Random(f"sample:{stream}").sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def load_split(data_cfg: Any, slot: str, registry: Any = None, echo: Callable[[str], None] | None = None) -> SplitData:
    """Load every source listed under ``data_cfg.<slot>``; each load's summary goes to ``echo``."""
    specs = list(getattr(data_cfg, slot))
    examples, source_index, reports = [], [], []
    for k, spec in enumerate(specs):
        report, split = load_source(spec, slot, registry)
        summary = report.summary(spec.name, split)
        if echo:
            echo(summary)
        reports.append(SourceReport(spec.name, split, float(getattr(spec, "weight", 1.0)), len(report.examples),
                                    dict(report.skipped), summary, list(report.details)))
        examples += report.examples
        source_index += [k] * len(report.examples)
    return SplitData(slot, examples, source_index, reports)


def tokenizer_corpus(split: SplitData, ser_cfg: Any = None) -> Iterable[str]:
    """The texts a tokenizer learns from: questions (with evidence), SQL and schema text, one
    schema per database."""
    seen_db = set()
    for ex in split.examples:
        yield question_text(ex)
        yield ex.sql
        if ex.db_id not in seen_db:
            seen_db.add(ex.db_id)
            yield serialize_for(ex, ser_cfg).text


def train_tokenizer(data_cfg: Any, out_dir: str | os.PathLike | None, registry: Any = None,
                    echo: Callable[[str], None] | None = None) -> Tokenizer:
    """Train the tokenizer ``data_cfg.tokenizer`` names on the training sources; save to ``out_dir``."""
    from vantage_core.config import plugin_params

    if registry is None:
        from vantage_core.plugins import registry as default_registry
        registry = default_registry()
    split = load_split(data_cfg, "train", registry, echo)
    tokenizer = registry.build("tokenizer", data_cfg.tokenizer.name, **plugin_params(data_cfg.tokenizer))
    tokenizer.train(list(tokenizer_corpus(split, data_cfg.serialization)), out_dir)
    return tokenizer


# ---------------------------------------------------------------------------- encoding

def encode_example(example: Example, tokenizer: Tokenizer, ser_cfg: Any = None, *,
                   cache: dict | None = None) -> dict[str, Any]:
    """Token ids of ``<bos> question <sep> schema <sql> SQL <eos>`` and what batching needs.

    The question is cut to ``max_question_tokens``; the schema is ranked and cut to
    ``max_schema_tokens`` (counted in this tokenizer's tokens); ``sql_truncated`` is set when
    the SQL is longer than ``max_sql_tokens`` (it is then cut, and training drops the example).
    """
    count = (lambda s: len(tokenizer.encode(s)))  # noqa: E731
    if cache is not None:  # one counter per tokenizer, so the schema cache (keyed by it) hits
        count = cache.setdefault(("count_tokens", id(tokenizer)), count)
    ser = serialize_for(example, ser_cfg, count_tokens=count, cache=cache)
    max_q = getattr(ser_cfg, "max_question_tokens", None)
    max_sql = getattr(ser_cfg, "max_sql_tokens", None)
    max_schema = getattr(ser_cfg, "max_schema_tokens", None)
    q = tokenizer.encode(question_text(example))[:max_q]
    schema = tokenizer.encode(ser.text)[:max_schema] if getattr(ser_cfg, "schema_in_prompt", True) else []
    sql = tokenizer.encode(example.sql)
    sql_truncated = max_sql is not None and len(sql) > max_sql
    sql = sql[:max_sql]
    prompt = [tokenizer.bos_id, *q, tokenizer.marker_id(SEP), *schema, tokenizer.marker_id(SQL)]
    tokens = prompt + sql + [tokenizer.eos_id]
    return {"tokens": tokens, "sql_start": len(prompt) - 1, "encoder_text": ser.text,
            "n_question": len(q), "n_schema": len(schema), "n_sql": len(sql), "length": len(tokens),
            "schema_cut": len(ser.cut), "sql_truncated": sql_truncated}


def column(ds: Any, name: str, numpy: bool = True):
    """A column of a ``datasets.Dataset`` read through Arrow in one go (row-wise access is slow)."""
    col = ds.with_format("arrow")[name]
    return col.to_numpy() if numpy else col.to_pylist()


@dataclass
class PreparedSplit:
    """A split ready for batching: the ``datasets.Dataset`` of encoded rows, and the examples."""

    slot: str
    dataset: Any  # datasets.Dataset: id, source, tokens, sql_start, encoder_text, n_question, ...
    examples: list[Example]  # aligned with dataset rows
    sources: list[SourceReport]
    cache_file: str | None = None
    from_cache: bool = False

    def __post_init__(self) -> None:
        tokens = self.dataset.with_format("arrow")["tokens"].combine_chunks()
        flat = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
        offsets = tokens.offsets.to_numpy()
        self.tokens = np.split(flat, offsets[1:-1]) if len(tokens) else []
        self.sql_start = column(self.dataset, "sql_start").astype(np.int32)
        self.encoder_texts: list[str] = column(self.dataset, "encoder_text", numpy=False)
        self.ids: list[str] = column(self.dataset, "id", numpy=False)
        self.source_index = column(self.dataset, "source").astype(np.int32)
        self.lengths = np.diff(offsets).astype(np.int32)

    def column(self, name: str) -> np.ndarray:
        """One scalar column of the encoded rows (n_question, n_schema, n_sql, length, ...)."""
        return column(self.dataset, name)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def record(self) -> dict[str, Any]:
        """What a run writes beside its results: per source, what was loaded, skipped and kept."""
        return {"slot": self.slot, "examples": len(self), "from_cache": self.from_cache,
                "sources": [s.to_dict() for s in self.sources]}


def _cache_key(split: SplitData, tokenizer: Tokenizer, ser_cfg: Any, max_seq_len: int | None, training: bool) -> str:
    h = hashlib.sha1()
    ser = ser_cfg.model_dump() if hasattr(ser_cfg, "model_dump") else dict(getattr(ser_cfg, "__dict__", {}) or {})
    fp = tokenizer.fingerprint() if hasattr(tokenizer, "fingerprint") else repr(tokenizer.vocab_size)
    h.update(json.dumps([PREPARE_VERSION, ser, fp, max_seq_len, training], sort_keys=True, default=str).encode())
    for ex in split.examples:  # the content, so a changed release never reads a stale cache
        h.update(f"{ex.id}\x00{ex.question}\x00{ex.sql}\x00{ex.db_id}\x00{ex.db_paths}\x00"
                 f"{ex.extras.get('evidence', '')}\n".encode())
    return h.hexdigest()[:20]


def prepare_split(data_cfg: Any, slot: str, tokenizer: Tokenizer, *, max_seq_len: int | None = None,
                  registry: Any = None, cache: bool = True, echo: Callable[[str], None] | None = None,
                  split: SplitData | None = None) -> PreparedSplit:
    """Load, serialize and tokenize one slot, through a ``datasets`` map cached on disk.

    In the train slot, examples whose SQL is longer than ``max_sql_tokens`` or whose sequence
    is longer than ``max_seq_len`` are dropped (counted per source in ``dropped``); in the
    other slots they are kept (evaluation decodes from the prompt).
    """
    import datasets

    split = split or load_split(data_cfg, slot, registry, echo)
    ser_cfg = data_cfg.serialization
    training = slot == "train"
    key = _cache_key(split, tokenizer, ser_cfg, max_seq_len, training)
    cache_dir = default_cache_dir(data_cfg) / "prepared"
    cache_file = cache_dir / f"{slot}-{key}.arrow"
    from_cache = cache and cache_file.is_file()
    if from_cache:
        encoded = datasets.Dataset.from_file(str(cache_file))
    else:
        raw = datasets.Dataset.from_dict({"row": list(range(len(split.examples))),
                                          "id": [e.id for e in split.examples],
                                          "source": split.source_index})
        schema_cache: dict = {}  # per schema: rendered pieces, cell values, token counts

        def encode(batch: dict[str, list]) -> dict[str, list]:
            out: dict[str, list] = {}
            for row in batch["row"]:
                enc = encode_example(split.examples[row], tokenizer, ser_cfg, cache=schema_cache)
                for k, v in enc.items():
                    out.setdefault(k, []).append(v)
            return out

        if cache:
            cache_dir.mkdir(parents=True, exist_ok=True)
        encoded = raw.map(encode, batched=True, batch_size=256, new_fingerprint=key,
                          cache_file_name=str(cache_file) if cache else None,
                          desc=f"tokenizing {slot}", load_from_cache_file=False)
    keep = np.ones(len(encoded), dtype=bool)
    reasons = Counter()
    if training:
        trunc = column(encoded, "sql_truncated").astype(bool)
        too_long = column(encoded, "length") > (max_seq_len + 1 if max_seq_len else 1 << 30)
        src = column(encoded, "source")
        for s in range(len(split.sources)):
            reasons[(s, f"SQL longer than max_sql_tokens={getattr(ser_cfg, 'max_sql_tokens', None)}")] += int((trunc & (src == s)).sum())
            reasons[(s, f"sequence longer than max_seq_len={max_seq_len}")] += int((too_long & ~trunc & (src == s)).sum())
        keep = ~(trunc | too_long)
    rows = column(encoded, "row")[keep]
    examples = [split.examples[r] for r in rows]
    if not keep.all():
        encoded = encoded.select(np.nonzero(keep)[0])
    for s, report in enumerate(split.sources):
        report.dropped = {why: n for (k, why), n in reasons.items() if k == s and n}
        report.kept = int((np.asarray(split.source_index, dtype=np.int64)[rows] == s).sum()) if len(rows) else 0
        if echo and report.dropped:
            echo(f"{report.name}/{report.split}: dropped " + "; ".join(f"{n} {w}" for w, n in report.dropped.items()))
    return PreparedSplit(slot, encoded, examples, split.sources, str(cache_file) if cache else None, from_cache)
