"""``outside``: hand-written questions over three public-domain databases that are not Spider's.

The tables are small CSV copies kept beside this module (``outside_data/``, with their sources in
``SOURCES.md``): US airports and the states and territories they are in, Seattle's daily weather
2012-2015, and US employment by sector 2006-2015 beside Iowa's electricity generation by source.
The SQLite databases are built from them on first use, under ``$VANTAGE_CACHE/outside/`` (or
``out_dir``), with names as people give them: mixed case, spaces, abbreviations, one wide table.
The questions and their gold SQL are in ``outside_data/questions.yaml``; one split, ``test``.
Every gold query is run when the split loads; a row whose query fails or returns no rows is
skipped with the reason. With ``notes: true``, each database's schema carries the notes its owner
would write (``outside_data/notes/<db_id>.notes.yaml``: descriptions, synonyms, value meanings;
:mod:`vantage_core.data.notes`).
"""

from __future__ import annotations

import csv
import hashlib
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from vantage_core.api import (NOTES_SUFFIX, DataError, Example, LoadReport, apply_notes, connect_readonly, quoted,
                              read_notes, schema_from_sqlite)
from vantage_plugins.datasets.files import read_yaml_data
from vantage_plugins.datasets.synthetic import default_cache_dir

DATA_DIR = Path(__file__).with_name("outside_data")
QUESTIONS_FILE = DATA_DIR / "questions.yaml"
NOTES_DIR = DATA_DIR / "notes"
VERSION = 1  # bump when the tables' layout changes, so cached databases are rebuilt


@dataclass(frozen=True)
class TableSource:
    """One table: which CSV it comes from, and each CSV field's column name and SQLite type."""

    name: str
    csv: str
    columns: tuple[tuple[str, str, str], ...]  # (CSV field, column name, type: TEXT REAL INTEGER DATE YEAR)
    keys: str  # the PRIMARY KEY / FOREIGN KEY clauses


def _sector(field: str, name: str) -> tuple[str, str, str]:
    return field, name, "REAL"


DATABASES: dict[str, tuple[TableSource, ...]] = {
    "us_airports": (
        TableSource("US States", "us-states.csv",
                    (("code", "State Code", "TEXT"), ("name", "State Name", "TEXT"),
                     ("census_region", "Census Region", "TEXT"), ("kind", "Kind", "TEXT")),
                    'PRIMARY KEY ("State Code")'),
        TableSource("Airports", "airports.csv",
                    (("iata", "IATA", "TEXT"), ("name", "AirportName", "TEXT"), ("city", "City", "TEXT"),
                     ("state", "StateCode", "TEXT"), ("country", "Country", "TEXT"),
                     ("latitude", "Lat", "REAL"), ("longitude", "Lon", "REAL")),
                    'PRIMARY KEY (IATA), FOREIGN KEY (StateCode) REFERENCES "US States" ("State Code")'),
    ),
    "seattle_weather": (
        TableSource("DailyWeather", "seattle-weather.csv",
                    (("date", "ObsDate", "DATE"), ("precipitation", "PrecipMM", "REAL"),
                     ("temp_max", "MaxTempC", "REAL"), ("temp_min", "MinTempC", "REAL"),
                     ("wind", "WindSpeed", "REAL"), ("weather", "Conditions", "TEXT")),
                    "PRIMARY KEY (ObsDate)"),
    ),
    "us_economy": (
        TableSource("Employment by Sector", "us-employment.csv", (
            ("month", "Month", "DATE"), _sector("nonfarm", "Total Nonfarm"), _sector("private", "Total Private"),
            _sector("goods_producing", "Goods Producing"), _sector("service_providing", "Service Providing"),
            _sector("private_service_providing", "Private Service Providing"),
            _sector("mining_and_logging", "Mining and Logging"), _sector("construction", "Construction"),
            _sector("manufacturing", "Manufacturing"), _sector("durable_goods", "Durable Goods"),
            _sector("nondurable_goods", "Nondurable Goods"),
            _sector("trade_transportation_utilties", "Trade Transport Utilities"),
            _sector("wholesale_trade", "Wholesale Trade"), _sector("retail_trade", "Retail Trade"),
            _sector("transportation_and_warehousing", "Transport and Warehousing"),
            _sector("utilities", "Utilities"), _sector("information", "Information"),
            _sector("financial_activities", "Financial Activities"),
            _sector("professional_and_business_services", "Prof and Business Svcs"),
            _sector("education_and_health_services", "Educ and Health Svcs"),
            _sector("leisure_and_hospitality", "Leisure and Hospitality"),
            _sector("other_services", "Other Services"), _sector("government", "Government"),
            ("nonfarm_change", "Nonfarm Change", "INTEGER")),
            'PRIMARY KEY ("Month")'),
        TableSource("IowaNetGeneration", "iowa-electricity.csv",
                    (("year", "Year", "YEAR"), ("source", "Source", "TEXT"), ("net_generation", "NetGenGWh", "INTEGER")),
                    "PRIMARY KEY (Year, Source)"),
    ),
}


def _cell(text: str, kind: str, where: str):
    """A CSV cell as the column's SQLite value; empty and ``NA`` are NULL."""
    text = text.strip()
    if text in ("", "NA"):
        return None
    try:
        if kind == "REAL":
            return float(text)
        if kind == "INTEGER":
            return int(text)
        if kind == "YEAR":  # "2001-01-01" -> 2001
            return int(text[:4])
        if kind == "DATE":  # "2012/01/01" -> "2012-01-01"
            return text.replace("/", "-")
    except ValueError:
        raise DataError(f"{where}: {text!r} is not a {kind.lower()}") from None
    return text


def _rows(table: TableSource) -> list[tuple]:
    path = DATA_DIR / table.csv
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c[0] for c in table.columns if c[0] not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: no column {', '.join(missing)}; has {', '.join(reader.fieldnames or [])}")
            return [tuple(_cell(row[field], kind, f"{path}:{i + 2}: {field}") for field, _, kind in table.columns)
                    for i, row in enumerate(reader)]
    except OSError as exc:
        raise DataError(f"{path}: cannot read the table's CSV file ({exc}); reinstall vantage") from None


def _create_statement(table: TableSource) -> str:
    types = {"YEAR": "INTEGER"}
    columns = ", ".join(f"{quoted(name)} {types.get(kind, kind)}" for _, name, kind in table.columns)
    return f"CREATE TABLE {quoted(table.name)} ({columns}, {table.keys})"


def write_database(path: Path, tables: tuple[TableSource, ...]) -> None:
    """Build one database from its CSV files, into a temporary file renamed into place when done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        for table in tables:
            conn.execute(_create_statement(table))
            marks = ", ".join("?" * len(table.columns))
            conn.executemany(f"INSERT INTO {quoted(table.name)} VALUES ({marks})", _rows(table))
        conn.commit()
    finally:
        conn.close()
    os.replace(tmp, path)


def _content_key() -> str:
    digest = hashlib.sha256(repr((VERSION, DATABASES)).encode())
    for name in sorted({t.csv for tables in DATABASES.values() for t in tables}):
        digest.update((DATA_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


def _question_rows() -> list:
    return read_yaml_data(QUESTIONS_FILE, "the questions", list, "a list of {db, question, sql} entries")


def gold_problem(db_path: Path, sql: str) -> str | None:
    """Why a gold query cannot score predictions (it fails, or returns no rows), or None."""
    conn = connect_readonly(db_path)
    try:
        return None if conn.execute(sql).fetchmany(1) else "returns no rows"
    except sqlite3.Error as exc:
        return f"fails: {exc}"
    finally:
        conn.close()


class OutsideDataset:
    """Questions over US airports, Seattle's weather and the US economy; one split, ``test``."""

    splits = ("test",)

    def __init__(self, out_dir: str | None = None, notes: bool = False):
        if not isinstance(notes, bool):
            raise DataError(f"dataset 'outside': notes must be true or false, got {notes!r}")
        self.dir = Path(out_dir) if out_dir else default_cache_dir() / "outside"
        self.notes = notes

    def database_paths(self) -> dict[str, Path]:
        """``db_id -> SQLite file``, each built from its CSV files when absent."""
        folder = self.dir / _content_key()
        paths = {}
        for db_id, tables in DATABASES.items():
            paths[db_id] = folder / db_id / f"{db_id}.sqlite"
            if not paths[db_id].is_file():
                write_database(paths[db_id], tables)
        return paths

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"outside has no split {split!r}; splits: {', '.join(self.splits)}")
        paths = self.database_paths()
        schemas = {db_id: schema_from_sqlite(path, db_id) for db_id, path in paths.items()}
        report = LoadReport([])
        if self.notes:
            schemas = {db_id: apply_notes(schema, read_notes(NOTES_DIR / f"{db_id}{NOTES_SUFFIX}", schema))
                       for db_id, schema in schemas.items()}
            report.notes.append(f"schema notes from {NOTES_DIR.name}/")
        for i, row in enumerate(_question_rows()):
            where = f"{QUESTIONS_FILE.name}: item {i}"
            if not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("db", "question", "sql")):
                report.skip("malformed row", f"{where}: needs text fields db, question, sql")
                continue
            if row["db"] not in paths:
                report.skip("unknown database", f"{where}: db {row['db']!r}; databases: {', '.join(paths)}")
                continue
            sql = " ".join(row["sql"].split())
            problem = gold_problem(paths[row["db"]], sql)
            if problem:
                report.skip(f"gold SQL {problem.split(':')[0]}", f"{where}: gold SQL {problem}")
                continue
            report.examples.append(Example(row["question"].strip(), sql, row["db"], schemas[row["db"]],
                                           [str(paths[row["db"]])], source="outside", id=f"outside/{split}/{i}"))
        return report
