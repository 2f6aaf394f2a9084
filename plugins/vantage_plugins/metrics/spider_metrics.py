"""Spider's exact set match and execution accuracy (test-suite accuracy when an example has
several databases), with the official semantics; see :mod:`vantage_core.evaluate.spider`."""

from __future__ import annotations

import os
from typing import Any

from vantage_core.api import Example, ExecutingMetric, spider, summarize_by


class _SpiderParsing:
    """Per-process caches of the parse-side inputs: the database's schema (which the official
    evaluator reads from SQLite, not tables.json) and the foreign-key map (from tables.json)."""

    def __init__(self, mode: str = "compat"):
        spider.iter_modes(mode)
        self.mode = mode
        self._kmaps: dict[str, dict[str, str]] = {}

    def db_schema(self, example: Example) -> spider.DbSchema:
        if example.db_paths and os.path.isfile(example.db_paths[0]):
            return spider.DbSchema.from_sqlite(os.path.abspath(example.db_paths[0]))
        return spider.DbSchema.from_schema(example.schema)

    def kmap(self, example: Example) -> dict[str, str]:
        key = example.db_id
        if key not in self._kmaps:
            self._kmaps[key] = spider.foreign_key_map(example.schema)
        return self._kmaps[key]

    def gold_tree(self, example: Example, schema: spider.DbSchema) -> tuple[dict | None, str | None]:
        try:
            return spider.parse(example.sql.strip(), schema, "compat"), None
        except spider.SpiderParseError as exc:
            return None, f"gold does not parse: {exc}"


class ExactMatch(_SpiderParsing):
    """Spider's exact set match. ``mode``: ``compat`` (the official evaluator, quirks included)
    or ``corrected`` (see :mod:`vantage_core.evaluate.spider` for each deviation)."""

    name, key = "exact_match", "exact"

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        schema = self.db_schema(example)
        gold, error = self.gold_tree(example, schema)
        if gold is None:
            return {"exact": None, "hardness": None, "pred_parsed": None, "error": error}
        level = spider.hardness(gold)
        if self.mode != "compat":
            try:
                gold = spider.parse(example.sql.strip(), schema, self.mode)
            except spider.SpiderParseError as exc:
                return {"exact": None, "hardness": level, "pred_parsed": None, "error": f"gold does not parse: {exc}"}
        pred_text = spider.prepare_prediction(prediction, self.mode)
        try:
            pred, parsed = spider.parse(pred_text, schema, self.mode), True
        except spider.SpiderParseError:
            pred, parsed = spider.empty_sql(), False
        kmap = self.kmap(example)
        same = spider.exact_match(spider.normalize(pred, schema, kmap, self.mode),
                                  spider.normalize(gold, schema, kmap, self.mode), self.mode)
        return {"exact": int(same), "hardness": level, "pred_parsed": parsed}

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize_by(scores, "exact", "exact_match")
        out["pred_parsed"] = sum(1 for s in scores if s.get("pred_parsed")) / max(1, len(scores))
        return out


class ExecutionAccuracy(ExecutingMetric, _SpiderParsing):
    """Spider's execution accuracy: the same rows (multiset; sequence when the gold orders) up to
    a column permutation, on every database of the example (test-suite accuracy when there are
    several). A gold query that fails scores None (the official evaluator stops there)."""

    name, key = "execution", "exec"

    def __init__(self, mode: str = "compat", timeout_s: float = 5.0, max_rows: int = 10000):
        ExecutingMetric.__init__(self, timeout_s, max_rows)
        _SpiderParsing.__init__(self, mode)

    def _hardness(self, example: Example) -> str | None:
        gold, _ = self.gold_tree(example, self.db_schema(example))
        return spider.hardness(gold) if gold is not None else None

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        level = self._hardness(example)
        if not example.db_paths:
            return {"exec": None, "hardness": level, "error": "example has no database"}
        gold_sql, pred_sql, order_matters = spider.execution_queries(example.sql, prediction, self.mode)
        out: dict[str, Any] = {"exec": 1, "hardness": level, "databases": len(example.db_paths)}
        for db_path in example.db_paths:
            gold = self.run_gold(db_path, gold_sql)
            if not gold.ok:
                return {"exec": None, "hardness": level, "error": f"gold fails on {db_path}: {gold.error}"}
            pred = self.run_prediction(db_path, pred_sql, gold)
            if not pred.ok:
                out.update(exec=0, error=pred.error, timed_out=pred.timed_out)
                break
            if not self.same_rows(gold, pred, order_matters, spider.results_equal):
                out["exec"] = 0
                break
        return out

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize_by(scores, "exec", "execution")
        out["timed_out"] = sum(1 for s in scores if s.get("timed_out"))
        return out
