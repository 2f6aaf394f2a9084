"""From a DataConfig to prepared splits: load each source through the registry, mix them with
weights, encode every example once in the rows of the config's target format, and cache the rows
on disk (one Arrow file per split, named by a key of its content).

    target = target_format(cfg.data)                       # vantage_core.data.targets
    prepared = target.prepare("train", tokenizer, max_seq_len=cfg.model.max_seq_len)
    batch = target.batch(prepared, rows, tokenizer)

:func:`prepare_split` is the one pipeline: a :class:`RowEncoder` (the format's) says what a row
holds, and :func:`cache_key` names the cache from the examples and the encoder's fingerprint. The
rows of ``data.target: tokens`` (:class:`TokenRows`, :class:`TokenSplit`) keep, per example, the
token ids of ``<bos> question <sep> schema <sql> SQL <eos>``, the position of ``<sql>`` and the
encoder's schema text; those of ``actions`` are in :mod:`vantage_core.data.actions`. Every
prepared split keeps the :class:`Example` of each row (for execution and metrics).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Protocol

import numpy as np

from vantage_core.data.example import Example, LoadReport
from vantage_core.data.serialize import serialize_for, question_text
from vantage_core.data.tokenizer import SEP, SQL, Tokenizer
from vantage_core.errors import DataError

# Bump when a cached row changes, so caches are rebuilt: a cache of another version has another
# name (1: token rows written by ``datasets``, and action features as gzip JSON beside them).
PREPARE_VERSION = 2


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


@dataclass
class PreparedSplit:
    """A split ready for batching: the encoded rows (an Arrow table, one row per example) and the
    examples, aligned. Every format's rows have ``row`` (the example's index in the loaded
    split), ``id``, ``source`` (the index of the source that gave it) and ``sort_key`` (what
    length-bucketed batches sort by); the format's subclass reads its own columns."""

    target: ClassVar[str] = ""  # the format's name, as data.target spells it

    slot: str
    table: Any  # pyarrow.Table
    examples: list[Example]
    sources: list[SourceReport]
    key: str = ""  # the content key (cache_key) the rows were encoded under
    cache_file: str | None = None
    from_cache: bool = False

    def __post_init__(self) -> None:
        self.ids: list[str] = self.table.column("id").to_pylist()
        self.source_index = self.column("source").astype(np.int64)
        self.lengths = self.column("sort_key").astype(np.int32)

    def column(self, name: str) -> np.ndarray:
        """One scalar column of the encoded rows (for tokens: n_question, n_schema, n_sql, length, ...)."""
        return self.table.column(name).to_numpy()

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def weights(self) -> list[float]:
        return [s.weight for s in self.sources]

    def record(self) -> dict[str, Any]:
        """What a run writes beside its results: per source, what was loaded, skipped and kept."""
        return {"slot": self.slot, "examples": len(self), "from_cache": self.from_cache, "target": self.target,
                "sources": [s.to_dict() for s in self.sources]}


class RowEncoder(Protocol):
    """What one target format puts in a prepared split's rows (what differs between formats)."""

    name: str  # the format's name, part of the cache file's name
    split_type: type[PreparedSplit]  # the split that reads these rows
    columns: tuple[str, ...]  # the columns encode gives besides sort_key

    def fingerprint(self) -> Any:
        """What decides the rows besides the examples (JSON-able): a version, settings, the tokenizer."""

    def encode(self, examples: list[Example], desc: str, progress: bool) -> dict[str, list]:
        """The format's columns and ``sort_key``, one entry per example, in order."""

    def drops(self, table: Any) -> dict[str, np.ndarray]:
        """Per reason a training row is dropped, which rows (bool, disjoint; in reporting order)."""


def cache_key(split: SplitData, fingerprint: Any) -> str:
    """The content key of a prepared split: the version, the encoder's fingerprint and every
    example (its text, SQL, database and schema), so a changed release never reads a stale cache."""
    h = hashlib.sha1(json.dumps([PREPARE_VERSION, fingerprint], sort_keys=True, default=str).encode())
    schemas: dict[int, bytes] = {}  # adapters share one schema object per database: serialize it once
    for ex in split.examples:
        h.update(f"{ex.id}\x00{ex.question}\x00{ex.sql}\x00{ex.db_id}\x00{ex.db_paths}\x00"
                 f"{ex.extras.get('evidence', '')}\n".encode())
        if id(ex.schema) not in schemas:
            schemas[id(ex.schema)] = json.dumps(ex.schema.to_dict() if hasattr(ex.schema, "to_dict") else repr(ex.schema),
                                                sort_keys=True, default=str).encode()
        h.update(schemas[id(ex.schema)])
    return h.hexdigest()[:20]


COMMON_COLUMNS = ("row", "id", "source", "sort_key")


def encoded_table(split: SplitData, rows: RowEncoder, desc: str, progress: bool) -> Any:
    """The rows of every example of ``split`` as an Arrow table."""
    import pyarrow as pa

    columns = rows.encode(split.examples, desc, progress)
    return pa.table({"row": np.arange(len(split.examples), dtype=np.int64), "id": [e.id for e in split.examples],
                     "source": np.asarray(split.source_index, dtype=np.int64), **columns})


def read_cached_rows(path: Path, rows: RowEncoder, n_examples: int) -> Any | None:
    """The table cached at ``path`` (memory-mapped), or None when there is none or it is not one
    this encoder wrote for these examples (unreadable, cut short, other columns): it is rebuilt."""
    import pyarrow as pa

    if not path.is_file():
        return None
    try:
        table = pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()
    except (OSError, pa.ArrowException):
        return None
    wanted = set(COMMON_COLUMNS) | set(rows.columns)
    return table if table.num_rows == n_examples and wanted <= set(table.column_names) else None


def write_cached_rows(path: Path, table: Any) -> None:
    """Write ``table`` to ``path`` whole or not at all (a temporary file renamed into place)."""
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


def prepare_split(data_cfg: Any, slot: str, rows: RowEncoder, *, registry: Any = None, cache: bool = True,
                  echo: Callable[[str], None] | None = None, split: SplitData | None = None,
                  progress: bool = True) -> PreparedSplit:
    """Load one slot (unless ``split`` is given) and encode every example in ``rows``' format,
    cached on disk by content (:func:`cache_key`).

    In the train slot, the rows ``rows.drops`` names are dropped (counted per source in
    ``dropped``); in the other slots they are kept (evaluation decodes from the prompt, and an
    example the format cannot write counts as wrong).
    """
    split = split or load_split(data_cfg, slot, registry, echo)
    key = cache_key(split, rows.fingerprint())
    cache_file = default_cache_dir(data_cfg) / "prepared" / f"{slot}-{rows.name}-{key}.arrow"
    table = read_cached_rows(cache_file, rows, len(split.examples)) if cache else None
    from_cache = table is not None
    if table is None:
        table = encoded_table(split, rows, f"encoding {slot}", progress)
        if cache:
            write_cached_rows(cache_file, table)
    if slot == "train":
        table = without_dropped(table, rows.drops(table), split, echo)
    examples = [split.examples[r] for r in table.column("row").to_numpy()]
    for s, report in enumerate(split.sources):
        report.kept = int((table.column("source").to_numpy() == s).sum())
    return rows.split_type(slot, table, examples, split.sources, key, str(cache_file) if cache else None, from_cache)


def without_dropped(table: Any, drops: dict[str, np.ndarray], split: SplitData,
                    echo: Callable[[str], None] | None) -> Any:
    """``table`` without the rows ``drops`` names; each source's report counts them by reason."""
    source = table.column("source").to_numpy()
    keep = np.ones(table.num_rows, dtype=bool)
    for mask in drops.values():
        keep &= ~mask
    for s, report in enumerate(split.sources):
        counts = {why: int((mask & (source == s)).sum()) for why, mask in drops.items()}
        report.dropped = {why: n for why, n in counts.items() if n}
        if echo and report.dropped:
            echo(f"{report.name}/{report.split}: dropped " + "; ".join(f"{n} {w}" for w, n in report.dropped.items()))
    return table if keep.all() else table.filter(keep)


# ---------------------------------------------------------------------------- the rows of data.target: tokens

@dataclass
class TokenSplit(PreparedSplit):
    """The rows of a token model: per example its token ids (``tokens``, up to ``<eos>``), the
    position of ``<sql>`` (``sql_start``) and the schema encoder's text (``encoder_texts``)."""

    target: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.tokens: list[np.ndarray] = []
        if len(self):
            tokens = self.table.column("tokens").combine_chunks()
            flat = tokens.values.to_numpy(zero_copy_only=False).astype(np.int32)
            self.tokens = np.split(flat, tokens.offsets.to_numpy()[1:-1])
        self.sql_start = self.column("sql_start").astype(np.int32)
        self.encoder_texts: list[str] = self.table.column("encoder_text").to_pylist()


@dataclass
class TokenRows:
    """:class:`RowEncoder` of ``data.target: tokens``: :func:`encode_example` with ``tokenizer``;
    a training row is dropped when its SQL was cut at ``max_sql_tokens`` or its sequence is
    longer than ``max_seq_len``."""

    tokenizer: Tokenizer
    ser_cfg: Any = None
    max_seq_len: int | None = None

    name: ClassVar[str] = "tokens"
    split_type: ClassVar[type[PreparedSplit]] = TokenSplit
    columns: ClassVar[tuple[str, ...]] = ("tokens", "sql_start", "encoder_text", "n_question", "n_schema", "n_sql",
                                          "length", "schema_cut", "sql_truncated")

    def fingerprint(self) -> Any:
        ser = self.ser_cfg.model_dump() if hasattr(self.ser_cfg, "model_dump") \
            else dict(getattr(self.ser_cfg, "__dict__", {}) or {})
        tok = self.tokenizer
        return [self.name, ser, tok.fingerprint() if hasattr(tok, "fingerprint") else repr(tok.vocab_size)]

    def encode(self, examples: list[Example], desc: str, progress: bool) -> dict[str, list]:
        from tqdm.auto import tqdm

        schema_cache: dict = {}  # per schema: rendered pieces, cell values, token counts
        out: dict[str, list] = {name: [] for name in self.columns}
        for ex in tqdm(examples, desc=desc, unit="ex", disable=not progress, dynamic_ncols=True):
            enc = encode_example(ex, self.tokenizer, self.ser_cfg, cache=schema_cache)
            for name in self.columns:
                out[name].append(enc[name])
        return {**out, "sort_key": out["length"]}

    def drops(self, table: Any) -> dict[str, np.ndarray]:
        truncated = table.column("sql_truncated").to_numpy(zero_copy_only=False).astype(bool)
        limit = self.max_seq_len + 1 if self.max_seq_len else 1 << 30
        too_long = table.column("length").to_numpy() > limit
        max_sql = getattr(self.ser_cfg, "max_sql_tokens", None)
        return {f"SQL longer than max_sql_tokens={max_sql}": truncated,
                f"sequence longer than max_seq_len={self.max_seq_len}": too_long & ~truncated}
