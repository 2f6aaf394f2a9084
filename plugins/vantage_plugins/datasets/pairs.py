"""``pairs``: question/SQL pairs over one SQLite database, one JSON object per line::

    {"question": "How many moons does Mars have?", "sql": "SELECT count(*) FROM moons WHERE planet_id = 4"}

What ``vantage adapt --examples`` trains on; any slot of a config may name such a file (every
split reads the whole file). With ``notes``, the schema carries that notes file's notes
(:mod:`vantage_core.data.notes`). A line that is not JSON or not UTF-8 is an error naming it; a
row without a non-empty text ``question`` and ``sql`` is skipped with its line and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vantage_core.api import DataError, Example, LoadReport
from vantage_plugins.datasets.files import database_schema, non_text_fields, read_jsonl_utf8

FIELDS = ("question", "sql")


def row_problem(row: Any) -> tuple[str, str] | None:
    """Why a row of a pairs file is not a pair, as (reason, what to do), or None when it is one."""
    if not isinstance(row, dict):
        return "not an object", f'expected an object {{"question": ..., "sql": ...}}, got {type(row).__name__}'
    missing = [f for f in FIELDS if f not in row]
    if missing:
        return "missing a field", (f"missing {' and '.join(missing)}; the row has "
                                   f"{', '.join(map(repr, row)) or 'no fields'} (a pair is question and sql)")
    wrong = non_text_fields(row, FIELDS)
    if wrong:
        return "a field that is not text", wrong
    empty = [f for f in FIELDS if not row[f].strip()]
    if empty:
        return "an empty field", f"{' and '.join(empty)} is empty"
    return None


class PairsDataset:
    """Question/SQL pairs from a JSON Lines file, over the SQLite database ``db``."""

    splits = ("train", "validation", "test")

    def __init__(self, path: str = "", db: str = "", notes: str | None = None):
        if not path:
            raise DataError("pairs: give path, the JSON Lines file of question/SQL pairs")
        self.path, self.db, self.notes = path, db, notes

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"pairs has no split {split!r}; splits: {', '.join(self.splits)}")
        schema = database_schema("pairs", self.db, self.notes)
        report = LoadReport([])
        for lineno, row in read_jsonl_utf8(Path(self.path)):
            problem = row_problem(row)
            if problem is not None:
                report.skip(problem[0], f"{self.path}:{lineno}: {problem[1]}")
                continue
            report.examples.append(Example(row["question"].strip(), row["sql"].strip(), schema.db_id, schema, [self.db],
                                           source="pairs", extras={"line": lineno}, id=f"pairs/{lineno}"))
        return report
