"""``spider`` and ``bird``: releases with a ``tables.json`` schema file and one SQLite database
per ``db_id`` under a database folder.

Spider: ``train_spider.json`` (optionally ``train_others.json``) and, when present, the
official ``dev.json``; databases at ``database/<db_id>/<db_id>.sqlite``. Spider's test-time
databases never appear in training, so the ``validation`` split holds out whole databases of the
training file (``holdout_fraction`` of them, chosen by ``seed``), never random questions.
``perturb: synonyms | values`` rewrites the validation questions (never the training ones) with
the gold SQL unchanged (:mod:`vantage_plugins.datasets.perturb`).

BIRD: ``train/train.json`` + ``train_tables.json`` + ``train_databases/`` and
``dev/dev.json`` + ``dev_tables.json`` + ``dev_databases/`` (or those files directly in
``path``); the evidence goes into the input (``extras["evidence"]``), the difficulty into extras.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from vantage_core.api import DataError, Example, LoadReport, Schema, missing_in_database, schema_from_spider_tables
from vantage_plugins.datasets.files import non_text_fields, read_json_utf8 as read_json
from vantage_plugins.datasets.perturb import PERTURBATIONS, perturbed


def shared_data_dir() -> Path:
    """``$VANTAGE_SHARED_DATA``, or ``../shared/data`` beside the repository."""
    env = os.environ.get("VANTAGE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "data"


def load_schemas(tables_file: Path) -> dict[str, Schema]:
    entries = read_json(tables_file)
    if not isinstance(entries, list):
        raise DataError(f"{tables_file}: expected a JSON list of databases, got {type(entries).__name__}")
    schemas = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "db_id" not in entry:
            raise DataError(f"{tables_file}: item {i}: expected an object with a db_id")
        schemas[entry["db_id"]] = schema_from_spider_tables(entry, source=str(tables_file))
    return schemas


class SpiderStyleRelease:
    """Rows of ``{db_id, question, <sql field>}`` checked against the schemas and databases."""

    sql_field = "query"
    source = "spider"

    def __init__(self, tables_file: Path, db_root: Path):
        self.tables_file, self.db_root = tables_file, db_root
        self._schemas: dict[str, Schema] | None = None
        self._db_problem: dict[str, str | None] = {}

    @property
    def schemas(self) -> dict[str, Schema]:
        if self._schemas is None:
            self._schemas = load_schemas(self.tables_file)
        return self._schemas

    def db_path(self, db_id: str) -> Path:
        return self.db_root / db_id / f"{db_id}.sqlite"

    def database_problem(self, db_id: str) -> tuple[str, str] | None:
        """(reason, detail) when the examples on ``db_id`` cannot be used, else None."""
        if db_id not in self._db_problem:
            problem = None
            path = self.db_path(db_id)
            if db_id not in self.schemas:
                problem = (f"database {db_id} not in {self.tables_file.name}",
                           f"database {db_id!r} has no entry in {self.tables_file}")
            elif not path.is_file():
                problem = (f"database {db_id} missing", f"database {db_id!r} not found at {path}")
            else:
                missing = missing_in_database(self.schemas[db_id], path)
                if missing:
                    problem = (f"schema of {db_id} names columns its database lacks",
                               f"{self.tables_file}: database {db_id!r}: {', '.join(missing[:5])} not in {path}")
            self._db_problem[db_id] = problem
        return self._db_problem[db_id]

    def examples(self, rows: list, file: Path, split: str, keep=None, extras=None) -> LoadReport:
        """The usable rows as examples; ``report.source_rows`` holds each one's index in ``rows``
        (so predictions written one per row of the file can be matched to them)."""
        report = LoadReport([])
        report.source_rows = []
        if not isinstance(rows, list):
            raise DataError(f"{file}: expected a JSON list of examples, got {type(rows).__name__}")
        fields = ("db_id", "question", self.sql_field)
        for i, row in enumerate(rows):
            where = f"{file.name}: item {i}"
            if not isinstance(row, dict) or any(k not in row for k in fields):
                have = ", ".join(map(repr, row)) if isinstance(row, dict) else type(row).__name__
                report.skip("malformed row", f"{where}: needs db_id, question, {self.sql_field}; has {have}")
                continue
            wrong_type = non_text_fields(row, fields)
            if wrong_type:
                report.skip("malformed row", f"{where}: {wrong_type}")
                continue
            db_id = row["db_id"]
            if keep is not None and db_id not in keep:
                continue
            problem = self.database_problem(db_id)
            if problem:
                report.skip(problem[0], f"{where}: {problem[1]}")
                continue
            ex = Example(row["question"].strip(), " ".join(row[self.sql_field].split()), db_id,
                         self.schemas[db_id], [str(self.db_path(db_id))], source=self.source,
                         extras=extras(row) if extras else {},
                         id=f"{self.source}/{split}/{row.get('question_id', i)}")
            report.examples.append(ex)
            report.source_rows.append(i)
        return report


class SpiderDataset:
    """Spider 1.0 from its official release folder; validation holds out whole databases."""

    def __init__(self, path: str | None = None, holdout_fraction: float = 0.15, seed: int = 0,
                 include_others: bool = False, perturb: str = "none"):
        self.path = Path(path) if path else shared_data_dir() / "spider"
        if not (self.path / "tables.json").is_file():
            raise DataError(f"spider: no tables.json in {self.path}; set `path:` to the folder of the official "
                            f"release (train_spider.json, tables.json, database/) or VANTAGE_SHARED_DATA")
        if not 0 < holdout_fraction < 1:
            raise DataError(f"spider: holdout_fraction must be in (0, 1), got {holdout_fraction}")
        if perturb not in PERTURBATIONS:
            raise DataError(f"spider: perturb must be one of {', '.join(PERTURBATIONS)}; got {perturb!r}")
        self.perturb = perturb
        self.holdout_fraction, self.seed, self.include_others = holdout_fraction, seed, include_others
        self.release = SpiderStyleRelease(self.path / "tables.json", self.path / "database")
        self.splits = ("train", "validation") + (("dev",) if (self.path / "dev.json").is_file() else ())
        self._train_rows: list | None = None

    def _train_files(self) -> list[Path]:
        files = [self.path / "train_spider.json"]
        if self.include_others and (self.path / "train_others.json").is_file():
            files.append(self.path / "train_others.json")
        return files

    def held_out_databases(self) -> set[str]:
        """The databases of the training file that form the validation split."""
        dbs = sorted({r["db_id"] for f in self._train_files() for r in read_json(f)
                      if isinstance(r, dict) and isinstance(r.get("db_id"), str)})
        random.Random(f"spider-holdout:{self.seed}").shuffle(dbs)
        return set(dbs[:max(1, round(self.holdout_fraction * len(dbs)))])

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"spider has no split {split!r}; splits here: {', '.join(self.splits)}")
        if split == "dev":
            return self.release.examples(read_json(self.path / "dev.json"), self.path / "dev.json", split)
        held = self.held_out_databases()
        report = LoadReport([])
        for f in self._train_files():
            rows = read_json(f)
            keep = held if split == "validation" else {r.get("db_id") for r in rows if isinstance(r, dict)
                                                       and isinstance(r.get("db_id"), str)} - held
            part = self.release.examples(rows, f, split, keep=keep)
            report.examples += part.examples
            report.skipped.update(part.skipped)
            report.details += part.details
        if split == "validation" and self.perturb != "none":
            report.examples, note = perturbed(report.examples, self.perturb, self.release.schemas)
            report.notes.append(note)
        return report

    @staticmethod
    def download(out_dir: str) -> str:
        """Questions and queries from the hub (``xlangai/spider``, parquet) as the release's
        ``train_spider.json`` and ``dev.json``; the hub copy has no databases."""
        from vantage_plugins.datasets.hub import fetch_repo, read_parquet_rows, write_json

        folder = fetch_repo("xlangai/spider", "Spider",
                            "download the release from https://yale-lily.github.io/spider and set "
                            "`path:` of the spider dataset (or VANTAGE_SHARED_DATA) to its folder", ["*.parquet"])
        rows = read_parquet_rows(folder, {"train": ("train",), "validation": ("validation", "dev")})
        out, written = Path(out_dir), []
        for split, name in (("train", "train_spider.json"), ("validation", "dev.json")):
            if split in rows:
                keep = [{"db_id": r["db_id"], "question": r["question"], "query": r["query"]} for r in rows[split]]
                written.append(str(write_json(out / name, keep)))
        if not written:
            raise DataError(f"xlangai/spider: no train or validation parquet file among the downloaded files in {folder}")
        return (f"wrote {', '.join(written)}; the hub copy holds no databases: add tables.json and database/ "
                f"from the official release (https://yale-lily.github.io/spider) to {out}")


class BirdDataset:
    """BIRD-SQL from its official release folder; the evidence goes into the input."""

    def __init__(self, path: str | None = None):
        self.path = Path(path) if path else shared_data_dir() / "bird"
        self.layout: dict[str, tuple[Path, Path, Path]] = {}
        for split in ("train", "dev"):
            for base in (self.path / split, self.path):
                files = (base / f"{split}.json", base / f"{split}_tables.json", base / f"{split}_databases")
                if files[0].is_file():
                    self.layout[split] = files
                    break
        if not self.layout:
            raise DataError(f"bird: no train/train.json or dev/dev.json under {self.path}; set `path:` to the "
                            f"folder of the official release")
        self.splits = tuple(self.layout) + (("validation",) if "dev" in self.layout else ())

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"bird has no split {split!r}; splits here: {', '.join(self.splits)}")
        split_file = "dev" if split == "validation" else split
        data_file, tables_file, db_root = self.layout[split_file]
        release = SpiderStyleRelease(tables_file, db_root)
        release.sql_field, release.source = "SQL", "bird"

        def extras(row: dict[str, Any]) -> dict[str, Any]:
            return {"evidence": (row.get("evidence") or "").strip(), "difficulty": row.get("difficulty")}

        return release.examples(read_json(data_file), data_file, split, extras=extras)

    @staticmethod
    def download(out_dir: str) -> str:
        """BIRD's mini-dev questions from the hub (``birdsql/bird_mini_dev``) as ``dev/dev.json``;
        the databases and ``dev_tables.json`` are not on the hub."""
        from vantage_plugins.datasets.hub import fetch_repo, read_parquet_rows, write_json

        folder = fetch_repo("birdsql/bird_mini_dev", "BIRD",
                            "download the release from https://bird-bench.github.io and set `path:` of the bird "
                            "dataset to its folder", ["*.parquet"])
        rows = [r for split_rows in read_parquet_rows(folder, {"dev": ("mini_dev_sqlite", "sqlite", "dev", "train",
                                                                        "validation")}).values() for r in split_rows]
        fields = ("question_id", "db_id", "question", "evidence", "SQL", "difficulty")
        rows = [{k: r.get(k) for k in fields if k in r} for r in rows if r.get("SQL") and r.get("db_id")]
        if not rows:
            raise DataError(f"birdsql/bird_mini_dev: no rows with db_id and SQL in the parquet files under {folder}")
        dev = write_json(Path(out_dir) / "dev" / "dev.json", rows)
        return (f"wrote {dev} ({len(rows)} questions); BIRD's databases are not on the hub: download dev.zip from "
                f"https://bird-bench.github.io and put dev_tables.json and dev_databases/ beside it")
