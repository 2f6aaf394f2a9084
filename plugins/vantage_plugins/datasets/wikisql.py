"""``wikisql``: WikiSQL from its official release folder.

Per split: ``<split>.jsonl`` (``table_id``, ``question``, ``sql = {sel, agg, conds}``),
``<split>.tables.jsonl`` (``id``, ``header``, ``types``, ``rows``) and ``<split>.db`` whose table
``table_<id with - as _>`` has columns ``col0..colN``. The logical form becomes SQL over that
table; the headers are the columns' natural names (the questions use them). Condition values mix
numbers and strings, so they are read as strings (pyarrow's type inference fails otherwise) and
quoted by the column's type.
"""

from __future__ import annotations

import re
from pathlib import Path

from vantage_core.data.example import Column, Example, LoadReport, Schema, Table
from vantage_plugins.datasets.files import non_text_fields, read_jsonl_utf8 as read_jsonl
from vantage_core.errors import DataError

AGG_OPS = ["", "MAX", "MIN", "COUNT", "SUM", "AVG"]
COND_OPS = ["=", ">", "<", "OP"]


def table_name(table_id: str) -> str:
    return "table_" + table_id.replace("-", "_")


def to_sql(sql: dict, table: str, types: list[str]) -> str:
    """WikiSQL's logical form as SQLite, as its official engine runs it: text values compared in
    lower case (the release's databases store text lower-cased), real values as numbers."""
    sel, agg = int(sql["sel"]), int(sql["agg"])
    col = f"col{sel}"
    select = f"{AGG_OPS[agg]}({col})" if agg else col
    where = []
    for c, op, value in sql.get("conds", []):
        c, op, value = int(c), int(op), str(value)
        if op >= 3:
            raise ValueError(f"condition operator index {op} ({COND_OPS[op] if op < 4 else '?'}) has no SQL form")
        number = re.search(r"-?\d+(?:\.\d+)?", value.replace(",", "")) if types[c] == "real" else None
        if number:  # as the official engine: a real column compares with the first number in the value
            literal = repr(float(number.group())).removesuffix(".0")
        else:
            literal = "'" + value.lower().replace("'", "''") + "'"
        where.append(f"col{c} {COND_OPS[op]} {literal}")
    return f"SELECT {select} FROM {table}" + (" WHERE " + " AND ".join(where) if where else "")


class WikiSQLDataset:
    """WikiSQL: single-table questions; the logical form turned into SQL over the release's .db."""

    def __init__(self, path: str | None = None):
        from vantage_plugins.datasets.spider import shared_data_dir

        self.path = Path(path) if path else shared_data_dir() / "wikisql"
        self.splits = tuple(s for s in ("train", "dev", "test") if (self.path / f"{s}.jsonl").is_file())
        if not self.splits:
            raise DataError(f"wikisql: no train.jsonl, dev.jsonl or test.jsonl in {self.path}; set `path:` to the "
                            f"folder of the official release (data/ of WikiSQL)")
        if "dev" in self.splits:
            self.splits += ("validation",)

    def raw(self, split: str):
        """The questions of one split as a ``datasets.Dataset``: each condition a struct of column,
        operator and value, the value as a string (Arrow needs one type per field)."""
        import datasets

        rows = [r for _, r in read_jsonl(self.path / f"{split}.jsonl")]
        for r in rows:
            r["sql"] = {**r["sql"], "conds": [{"column": int(c), "operator": int(o), "value": str(v)}
                                              for c, o, v in r["sql"].get("conds", [])]}
        return datasets.Dataset.from_list(rows)

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"wikisql has no split {split!r}; splits here: {', '.join(self.splits)}")
        split = "dev" if split == "validation" else split
        tables_file, db = self.path / f"{split}.tables.jsonl", self.path / f"{split}.db"
        if not db.is_file():
            raise DataError(f"wikisql: database {db} not found (it comes with {split}.jsonl in the release)")
        schemas: dict[str, tuple[Schema, list[str]]] = {}
        for lineno, t in read_jsonl(tables_file):
            if not isinstance(t, dict) or not {"id", "header", "types"} <= set(t):
                raise DataError(f"{tables_file}:{lineno}: a table needs id, header and types")
            name = table_name(t["id"])
            cols = [Column(f"col{i}", "number" if ty == "real" else "text", h) for i, (h, ty) in
                    enumerate(zip(t["header"], t["types"]))]
            schemas[t["id"]] = (Schema(name, [Table(name, cols)]), t["types"])
        report = LoadReport([])
        data_file = self.path / f"{split}.jsonl"
        for lineno, row in read_jsonl(data_file, strict=False):
            where = f"{data_file.name}:{lineno}"
            if isinstance(row, DataError):
                report.skip("malformed JSON line", str(row))
                continue
            if not isinstance(row, dict) or not {"table_id", "question", "sql"} <= set(row):
                report.skip("malformed row", f"{where}: needs table_id, question, sql")
                continue
            wrong_type = non_text_fields(row, ("table_id", "question"))
            if wrong_type:
                report.skip("malformed row", f"{where}: {wrong_type}")
                continue
            if row["table_id"] not in schemas:
                report.skip("table not in tables file", f"{where}: table {row['table_id']!r} not in {tables_file.name}")
                continue
            schema, types = schemas[row["table_id"]]
            try:
                sql = to_sql(row["sql"], schema.db_id, types)
            except (KeyError, ValueError, IndexError, TypeError) as exc:
                report.skip("logical form not convertible", f"{where}: {type(exc).__name__}: {exc}")
                continue
            report.examples.append(Example(row["question"].strip(), sql, schema.db_id, schema, [str(db)],
                                           source="wikisql", extras={"logical_form": row["sql"]},
                                           id=f"wikisql/{split}/{lineno}"))
        return report

    @staticmethod
    def download(out_dir: str) -> str:
        from vantage_plugins.datasets.hub import load_from_hub

        load_from_hub("Salesforce/wikisql", "WikiSQL",
                      "download data.tar.bz2 from https://github.com/salesforce/WikiSQL, unpack it and set "
                      "`path:` of the wikisql dataset to its data/ folder")
        return ("the hub copy holds no .db files: download data.tar.bz2 from https://github.com/salesforce/WikiSQL "
                f"and unpack it into {out_dir}")
