"""The metric protocol, and helpers the built-in metrics share."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol, runtime_checkable

from vantage_core.data.example import Example
from vantage_core.sql.database import open_database
from vantage_core.sql.result import ExecutionResult, same_result

HARDNESS_ORDER = ("easy", "medium", "hard", "extra")


@runtime_checkable
class Metric(Protocol):
    """What a registered metric factory returns. It must pickle (the runner ships it to worker
    processes), and ``score`` must depend only on its arguments, so that any number of workers
    gives the same results."""

    name: str  # the key its summary is reported under, e.g. "exact_match"
    key: str  # the per-example field that holds 0/1 (or a float), None when it cannot be scored

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        """Per-example fields, e.g. ``{"exact": 1, "hardness": "easy"}``."""

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        """Aggregate of many :meth:`score` results, e.g. ``{"exact_match": 0.61, "n": 1034}``."""


def mean_of(scores: list[dict[str, Any]], key: str) -> tuple[float | None, int]:
    """Mean of ``key`` over the scores where it is not None, and how many those were."""
    values = [s[key] for s in scores if s.get(key) is not None]
    return (sum(values) / len(values) if values else None), len(values)


def summarize_by(scores: list[dict[str, Any]], key: str, name: str, group: str | None = "hardness",
                 order: tuple[str, ...] = HARDNESS_ORDER) -> dict[str, Any]:
    """``{name: mean, "n": scored, "unscored": n}`` plus a breakdown by the ``group`` field."""
    value, n = mean_of(scores, key)
    out: dict[str, Any] = {name: value, "n": n, "unscored": len(scores) - n}
    if group:
        groups = sorted({s.get(group) for s in scores if s.get(group) is not None},
                        key=lambda g: (order.index(g) if g in order else len(order), str(g)))
        if groups:
            out[f"by_{group}"] = {}
            for g in groups:
                v, k = mean_of([s for s in scores if s.get(group) == g], key)
                out[f"by_{group}"][g] = {name: v, "n": k}
    return out


class ExecutingMetric:
    """Base for metrics that run SQL, through each database's connector (a SQLite file in this
    process's sandbox pool), with a small cache of gold results (gold queries repeat across
    metrics and test-suite databases)."""

    def __init__(self, timeout_s: float = 5.0, max_rows: int = 10000, gold_cache: int = 512):
        self.timeout_s, self.max_rows, self.gold_cache_size = timeout_s, max_rows, gold_cache
        self._gold: OrderedDict[tuple[str, str], ExecutionResult] = OrderedDict()

    def run(self, db_path: str, sql: str, digest: bool = False) -> ExecutionResult:
        """``digest``: read and hash the whole result (needed to compare results over the cap)."""
        if not sql.strip():
            return ExecutionResult(False, [], "empty query")
        return open_database(db_path).execute(sql, self.timeout_s, self.max_rows, digest=digest)

    def run_prediction(self, db_path: str, sql: str, gold: ExecutionResult) -> ExecutionResult:
        """The prediction's result, hashed in full only when the gold's was cut at the cap
        (against a complete gold, a cut prediction is wrong whatever its later rows)."""
        return self.run(db_path, sql, digest=gold.truncated)

    @staticmethod
    def same_rows(gold: ExecutionResult, pred: ExecutionResult, order_matters: bool, equal_rows) -> bool:
        """Complete results compared with ``equal_rows``; see :func:`~vantage_core.sql.result.same_result`."""
        return same_result(gold, pred, order_matters, equal_rows)

    def run_gold(self, db_path: str, sql: str) -> ExecutionResult:
        key = (db_path, sql)
        if key in self._gold:
            self._gold.move_to_end(key)
            return self._gold[key]
        result = self.run(db_path, sql, digest=True)
        if result.truncated:
            result.rows = []  # a cut result is compared by its digest only: keep no rows in the cache
        self._gold[key] = result
        if len(self._gold) > self.gold_cache_size:
            self._gold.popitem(last=False)
        return result

    def close(self) -> None:
        """Forget the gold results held (the connectors stay open for the rest of the process)."""
        self._gold.clear()

    def __getstate__(self):  # travels as its settings, without the gold results it holds
        state = dict(self.__dict__)
        state["_gold"] = OrderedDict()
        return state
