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

from vantage_core.api import Column, DataError, Example, LoadReport, Schema, Table
from vantage_plugins.datasets.files import non_text_fields, read_jsonl_utf8 as read_jsonl

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
        """WikiSQL from the hub's parquet copy (``Salesforce/wikisql``, revision
        ``refs/convert/parquet``) written as the release: per split ``<split>.jsonl``,
        ``<split>.tables.jsonl`` and ``<split>.db`` (built from the tables' rows)."""
        from vantage_plugins.datasets.hub import fetch_repo, read_parquet_rows

        folder = fetch_repo("Salesforce/wikisql", "WikiSQL",
                            "download data.tar.bz2 from https://github.com/salesforce/WikiSQL, unpack it and set "
                            "`path:` of the wikisql dataset to its data/ folder", ["*.parquet"],
                            revision="refs/convert/parquet")
        rows = read_parquet_rows(folder, {"train": ("train",), "dev": ("validation", "dev"), "test": ("test",)})
        if not rows:
            raise DataError(f"Salesforce/wikisql: no train/validation/test parquet file under {folder}")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        written = [write_release_split(out, split, split_rows) for split, split_rows in sorted(rows.items())]
        return "wrote " + "; ".join(written)


def write_release_split(out: Path, split: str, rows: list[dict]) -> str:
    """One split of the hub's rows (``question``, ``table{id, header, types, rows}``,
    ``sql{sel, agg, conds{column_index, operator_index, condition}}``) as the release's files."""
    import json
    import sqlite3

    tables: dict[str, dict] = {}
    with open(out / f"{split}.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            t, q = r["table"], r["sql"]
            tables.setdefault(t["id"], t)
            conds = q.get("conds") or {}
            triples = [list(c) for c in zip(conds.get("column_index", []), conds.get("operator_index", []),
                                            conds.get("condition", []))]
            f.write(json.dumps({"phase": r.get("phase"), "table_id": t["id"], "question": r["question"],
                                "sql": {"sel": q["sel"], "agg": q["agg"], "conds": triples}}, ensure_ascii=False) + "\n")
    with open(out / f"{split}.tables.jsonl", "w", encoding="utf-8") as f:
        for t in tables.values():
            f.write(json.dumps({k: t.get(k) for k in ("id", "header", "types", "rows", "page_title", "caption")},
                               ensure_ascii=False) + "\n")
    db = out / f"{split}.db"
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    try:
        for t in tables.values():
            _write_table(con, t)
        con.commit()
    finally:
        con.close()
    return f"{out}/{split}.jsonl, .tables.jsonl, .db ({len(rows)} questions, {len(tables)} tables)"


def _write_table(con, t: dict) -> None:
    """A table as the release's database holds it: columns col0..colN, text lower-cased (the
    official engine compares lower-cased values), reals as numbers where they parse."""
    kinds = ["REAL" if ty == "real" else "TEXT" for ty in t["types"]]
    cols = ", ".join(f"col{i} {k}" for i, k in enumerate(kinds))
    con.execute(f'CREATE TABLE "{table_name(t["id"])}" ({cols})')
    marks = ", ".join("?" for _ in kinds)
    con.executemany(f'INSERT INTO "{table_name(t["id"])}" VALUES ({marks})',
                    [[_cell(v, k) for v, k in zip(row, kinds)] for row in t.get("rows") or []])


def _cell(value, kind: str):
    if kind == "REAL":
        try:
            return float(str(value).replace(",", ""))
        except ValueError:
            return str(value).lower()
    return str(value).lower()
