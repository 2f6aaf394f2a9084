"""``gretel``: gretelai/synthetic_text_to_sql from a local copy (parquet as on the hub, or JSON
lines), each ``sql_context`` materialized into its own SQLite database.

Rows: ``id, domain, domain_description, sql_complexity, sql_task_type, sql_prompt,
sql_context, sql, sql_explanation``. Contexts that SQLite cannot build (other dialects), and,
with ``check_sql``, gold queries that fail on their built database, are counted and reported.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

from vantage_core.api import DataError, Example, LoadReport, connect_readonly, schema_from_sqlite
from vantage_plugins.datasets.files import read_jsonl_utf8 as read_jsonl

FIELDS = ("id", "sql_prompt", "sql_context", "sql")


def materialize(context: str, out_dir: Path) -> Path:
    """Build the database a ``sql_context`` describes (once per distinct context)."""
    key = hashlib.sha1(context.encode()).hexdigest()[:16]
    path = out_dir / f"{key}.sqlite"
    if path.is_file():
        return path
    tmp = out_dir / f"{key}.tmp{os.getpid()}"
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.executescript(context)
        conn.commit()
    except sqlite3.Error:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    os.replace(tmp, path)
    return path


class GretelDataset:
    """Gretel's synthetic text-to-SQL; every context becomes its own SQLite database."""

    def __init__(self, path: str | None = None, out_dir: str | None = None, check_sql: bool = True):
        from vantage_plugins.datasets.spider import shared_data_dir

        self.path = Path(path) if path else shared_data_dir() / "gretel"
        self.files = {}
        for split in ("train", "test"):
            for name in (f"synthetic_text_to_sql_{split}.snappy.parquet", f"{split}.parquet", f"{split}.jsonl"):
                if (self.path / name).is_file():
                    self.files[split] = self.path / name
                    break
        if not self.files:
            raise DataError(f"gretel: no train/test file in {self.path} (expected synthetic_text_to_sql_train."
                            f"snappy.parquet, train.parquet or train.jsonl); set `path:` to the local copy")
        self.splits = tuple(self.files)
        key = hashlib.sha1(str(self.path.resolve()).encode()).hexdigest()[:12]
        from vantage_plugins.datasets.synthetic import default_cache_dir

        self.db_dir = Path(out_dir) if out_dir else default_cache_dir() / "gretel" / key
        self.check_sql = check_sql

    def _rows(self, file: Path):
        if file.suffix == ".jsonl":
            yield from read_jsonl(file, strict=False)
            return
        import datasets

        for i, row in enumerate(datasets.Dataset.from_parquet(str(file))):
            yield i + 1, row

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"gretel has no split {split!r}; splits here: {', '.join(self.splits)}")
        from tqdm import tqdm

        file = self.files[split]
        self.db_dir.mkdir(parents=True, exist_ok=True)
        report = LoadReport([])
        built: dict[str, tuple[Path, object] | str] = {}
        for lineno, row in tqdm(self._rows(file), desc=f"gretel/{split}", unit=" rows", mininterval=2,
                                disable=None):
            where = f"{file.name}:{lineno}"
            if isinstance(row, DataError):
                report.skip("malformed JSON line", str(row))
                continue
            if not isinstance(row, dict) or any(not row.get(f) for f in FIELDS):
                report.skip("malformed row", f"{where}: needs {', '.join(FIELDS)}")
                continue
            context = row["sql_context"]
            if context not in built:
                try:
                    db = materialize(context, self.db_dir)
                    built[context] = (db, schema_from_sqlite(db, db_id=f"gretel_{db.stem}"))
                except (sqlite3.Error, DataError) as exc:
                    built[context] = str(exc)
            entry = built[context]
            if isinstance(entry, str):
                report.skip("sql_context failed to build in SQLite", f"{where}: id {row['id']}: {entry}")
                continue
            db, schema = entry
            sql = " ".join(str(row["sql"]).split())
            if self.check_sql:
                conn = connect_readonly(db)
                try:
                    conn.execute(sql).fetchmany(1)
                except sqlite3.Error as exc:
                    report.skip("gold SQL fails on its context", f"{where}: id {row['id']}: {exc}")
                    continue
                finally:
                    conn.close()
            report.examples.append(Example(
                str(row["sql_prompt"]).strip(), sql, schema.db_id, schema, [str(db)], source="gretel",
                extras={k: row.get(k) for k in ("domain", "sql_complexity", "sql_task_type")},
                id=f"gretel/{split}/{row['id']}"))
        return report

    @staticmethod
    def download(out_dir: str) -> str:
        """The release's two parquet files, under the names the adapter reads, into ``out_dir``."""
        from vantage_plugins.datasets.hub import fetch_repo

        out = fetch_repo("gretelai/synthetic_text_to_sql", "Gretel synthetic_text_to_sql",
                         "download synthetic_text_to_sql_{train,test}.snappy.parquet from "
                         "https://huggingface.co/datasets/gretelai/synthetic_text_to_sql on a machine with a "
                         "network and set `path:` of the gretel dataset to their folder",
                         ["synthetic_text_to_sql_*.snappy.parquet"], local_dir=out_dir)
        return f"wrote {', '.join(str(p) for p in sorted(out.glob('*.parquet')))}"
