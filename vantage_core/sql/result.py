"""What running one query gives (:class:`ExecutionResult`), how its rows are read within the row
and byte caps (:func:`fetch_bounded`, every engine's one reader), how a whole result is hashed
(:class:`ResultHasher`), and when two results are the same (:func:`same_result`)."""

from __future__ import annotations

import datetime
import decimal
import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

# what a result may hold in the parent by default: rows past this many bytes are cut (truncated)
DEFAULT_RESULT_BYTES = 32 << 20


@dataclass
class ExecutionResult:
    """One query's outcome: its rows (up to the caps) or what went wrong."""

    ok: bool
    rows: list[tuple] = field(default_factory=list)
    error: str | None = None
    elapsed: float = 0.0  # seconds spent executing and fetching
    timed_out: bool = False
    truncated: bool = False  # over max_rows rows or max_result_bytes bytes: only the first ones are kept
    n_rows: int | None = None  # rows in the whole result (None when reading stopped at the cap)
    digest: str | None = None  # hash of the whole result as a multiset of rows (with digest=True)
    ordered_digest: str | None = None  # hash of the whole result as a sequence of rows
    peak_bytes: int | None = None  # the worker's peak resident memory while it ran the query (Linux)


def same_result(gold: ExecutionResult, pred: ExecutionResult, order_matters: bool, equal_rows) -> bool:
    """Whether two successful results are the same, comparing complete results only.

    ``equal_rows(gold_rows, pred_rows, order_matters)`` decides for two complete results (the
    benchmark's own semantics). A result cut at the cap is never equal to a complete one; two
    cut results are equal only when their digests of every row agree (same row count, same rows
    with the same column order), and never when a digest is missing.
    """
    if not gold.truncated and not pred.truncated:
        return equal_rows(gold.rows, pred.rows, order_matters)
    if not (gold.truncated and pred.truncated and gold.digest and pred.digest):
        return False
    if gold.n_rows != pred.n_rows:
        return False
    if order_matters:
        return gold.ordered_digest == pred.ordered_digest
    return gold.digest == pred.digest


def row_bytes(row: tuple) -> int:
    """About what ``row`` costs once pickled: its text and blobs, 8 bytes per other value."""
    return 16 + sum(len(v) if isinstance(v, (str, bytes)) else 8 for v in row)


def value_bytes(value: Any) -> bytes:
    """A value's bytes for hashing; numbers equal in Python (1 and 1.0) hash the same."""
    if value is None:
        return b"n"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    if isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        return b"s" + len(data).to_bytes(8, "little") + data
    data = bytes(value)
    return b"b" + len(data).to_bytes(8, "little") + data


class ResultHasher:
    """Digests of a whole result: as a multiset of rows (a sum of row hashes, so row order
    does not matter) and as a sequence of rows (a running hash)."""

    _MOD = 1 << 128

    def __init__(self) -> None:
        self.multiset = 0
        self.sequence = hashlib.blake2b(digest_size=16)

    def add(self, row: tuple) -> None:
        h = hashlib.blake2b(digest_size=16)
        for value in row:
            h.update(value_bytes(value))
        h.update(b"|%d" % len(row))  # (a, b) and (ab,) differ
        row_digest = h.digest()
        self.multiset = (self.multiset + int.from_bytes(row_digest, "little")) % self._MOD
        self.sequence.update(row_digest)

    def digests(self) -> tuple[str, str]:
        return f"{self.multiset:032x}", self.sequence.hexdigest()


def plain(value: Any) -> Any:
    """A value as SQLite's driver would give it, so results compare across engines: decimals as
    int or float (infinite and NaN ones as float), dates and times as ISO text, binary as bytes."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return int(value) if value.is_finite() and value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (list, dict, tuple)):
        return str(value)
    return value


def fetch_bounded(rows: Iterable[tuple], max_rows: int, max_result_bytes: int, digest: bool,
                  convert: Callable[[Any], Any] | None = None) -> ExecutionResult:
    """The rows of ``rows`` (each value passed through ``convert`` when given: :func:`plain` for
    engines other than SQLite) up to ``max_rows`` rows and ``max_result_bytes`` bytes (then
    ``truncated``). Reading stops at the cap, unless ``digest``: then every row is read and hashed
    (one at a time, so a long result costs time, bounded by the deadline, not memory), so that
    two cut results still compare in full."""
    kept: list[tuple] = []
    kept_bytes, seen, truncated = 0, 0, False
    hasher = ResultHasher() if digest else None
    for raw in rows:
        row = tuple(convert(v) for v in raw) if convert is not None else raw
        seen += 1
        if hasher is not None:
            hasher.add(row)
        if not truncated:
            size = row_bytes(row)
            if len(kept) < max_rows and kept_bytes + size <= max_result_bytes:
                kept.append(row)
                kept_bytes += size
            else:
                truncated = True
        if truncated and hasher is None:
            break  # no digest asked: nothing past the cap is needed
    result = ExecutionResult(True, kept, truncated=truncated)
    if hasher is not None or not truncated:
        result.n_rows = seen
    if hasher is not None:
        result.digest, result.ordered_digest = hasher.digests()
    return result
