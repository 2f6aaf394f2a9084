"""A dataset adapter for the simplest format there is: one JSON object per line."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from vantage_core.api import DataError, Example, LoadReport, schema_from_sqlite


class JsonlPairs:
    """Question/SQL pairs from ``{split}.jsonl``: ``{"question": ..., "sql": ..., "db": "file.sqlite"}``."""

    splits = ("train", "validation", "test")

    def __init__(self, path: str, db_dir: str | None = None):
        self.path = Path(path)  # a folder holding train.jsonl, validation.jsonl, test.jsonl
        self.db_dir = Path(db_dir) if db_dir else self.path

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"jsonl_pairs has no split {split!r}; splits: {', '.join(self.splits)}")
        file = self.path / f"{split}.jsonl"
        if not file.is_file():
            raise DataError(f"{file}: not found (jsonl_pairs reads <path>/<split>.jsonl)")
        report = LoadReport([], Counter())
        schemas = {}
        for lineno, line in enumerate(file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                question, sql, db = row["question"], row["sql"], row["db"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(f"{file}:{lineno}: expected a JSON object with question, sql and db: {exc}") from None
            db_path = self.db_dir / db
            if not db_path.is_file():
                report.skipped["database missing"] += 1
                report.details.append(f"{file}:{lineno}: database {db_path} not found")
                continue
            if db not in schemas:
                schemas[db] = schema_from_sqlite(db_path, Path(db).stem)
            report.examples.append(Example(question, sql, schemas[db].db_id, schemas[db], [str(db_path)],
                                           source="jsonl_pairs"))
        return report
