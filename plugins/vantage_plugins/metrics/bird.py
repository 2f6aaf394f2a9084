"""BIRD's execution accuracy (EX) and valid efficiency score (VES), as its official scripts
define them: a prediction is correct when its rows, as a set, equal the gold's; VES rewards a
correct prediction by sqrt(gold time / predicted time), averaged over all examples, times 100
(incorrect ones add 0)."""

from __future__ import annotations

import math
import statistics
from typing import Any

from vantage_core.api import Example, ExecutingMetric, summarize_by

DIFFICULTY_ORDER = ("simple", "moderate", "challenging")


def _level(example: Example) -> str | None:
    return example.extras.get("difficulty")


class BirdExecution(ExecutingMetric):
    """BIRD EX: set equality of the result rows on the example's first database."""

    name, key = "bird_ex", "exec"

    def __init__(self, timeout_s: float = 30.0, max_rows: int = 100000):
        super().__init__(timeout_s, max_rows)

    def compare(self, example: Example, prediction: str) -> tuple[dict[str, Any], Any, Any]:
        out: dict[str, Any] = {"exec": 0, "difficulty": _level(example)}
        if not example.db_paths:
            return {**out, "exec": None, "error": "example has no database"}, None, None
        db = example.db_paths[0]
        gold = self.run_gold(db, example.sql)
        if not gold.ok:
            return {**out, "exec": None, "error": f"gold fails: {gold.error}"}, None, None
        pred = self.run_prediction(db, " ".join(prediction.split()), gold)
        if not pred.ok:
            return {**out, "error": pred.error, "timed_out": pred.timed_out}, gold, pred
        out["exec"] = int(self.same_rows(gold, pred, False, lambda g, p, _: set(p) == set(g)))
        return out, gold, pred

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        return self.compare(example, prediction)[0]

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_by(scores, "exec", self.name, group="difficulty", order=DIFFICULTY_ORDER)


def _without_outliers(values: list[float]) -> list[float]:
    """BIRD's cleaning: keep the ratios within three standard deviations of their mean."""
    if len(values) < 2:
        return values
    mean, std = statistics.fmean(values), statistics.pstdev(values)
    kept = [v for v in values if mean - 3 * std < v < mean + 3 * std]
    return kept or values


class BirdVES(BirdExecution):
    """BIRD VES. ``iterations``: timed runs of each query pair (BIRD's script uses 100)."""

    name, key = "bird_ves", "ves"

    def __init__(self, timeout_s: float = 30.0, max_rows: int = 100000, iterations: int = 10):
        super().__init__(timeout_s, max_rows)
        self.iterations = iterations

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        out, gold, pred = self.compare(example, prediction)
        if out["exec"] is None:
            return {**out, "ves": None}
        ratio = 0.0
        if out["exec"]:
            db, pred_sql = example.db_paths[0], " ".join(prediction.split())
            ratios = []
            for _ in range(self.iterations):
                p, g = self.run(db, pred_sql), self.run(db, example.sql)  # not cached: timed
                if p.ok and g.ok:
                    ratios.append(g.elapsed / max(p.elapsed, 1e-9))
            ratios = _without_outliers(ratios)
            ratio = sum(ratios) / len(ratios) if ratios else 0.0
        return {**out, "time_ratio": ratio, "ves": 100 * math.sqrt(ratio)}

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        # VES is a score out of ~100, not a rate: the summary holds it as is
        return summarize_by(scores, "ves", self.name, group="difficulty", order=DIFFICULTY_ORDER)
