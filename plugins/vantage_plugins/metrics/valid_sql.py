"""The share of predictions that parse (sqlglot, SQLite dialect) and run without error."""

from __future__ import annotations

from typing import Any

from vantage_core.api import Example, ExecutingMetric, summarize_by


class ValidSQL(ExecutingMetric):
    """Share of predictions that parse (sqlglot) and, where the example has a database, run."""

    name, key = "valid_sql", "valid"

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        import sqlglot

        try:
            parses = sqlglot.parse_one(prediction, read="sqlite") is not None
        except Exception:  # noqa: BLE001 - any parse failure
            parses = False
        runs = None
        error = None
        if example.db_paths:
            result = self.run(example.db_paths[0], prediction)
            runs, error = result.ok, result.error
        valid = int(parses and runs is not False)
        out = {"valid": valid, "parses": parses, "runs": runs}
        if error:
            out["error"] = error
        return out

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        out = summarize_by(scores, "valid", self.name, group=None)
        out["parses"] = sum(1 for s in scores if s.get("parses")) / max(1, len(scores))
        return out
