"""Read a :class:`Schema` straight from a SQLite file (for databases that come without a schema file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from vantage_core.data.example import Column, ForeignKey, Schema, Table
from vantage_core.errors import DataError


def coarse_type(declared: str) -> str:
    """Spider's coarse column types from a declared SQLite type."""
    t = (declared or "").lower()
    if any(k in t for k in ("int", "real", "floa", "doub", "num", "dec")):
        return "number"
    if any(k in t for k in ("date", "time", "year")):
        return "time"
    if "bool" in t:
        return "boolean"
    if any(k in t for k in ("char", "text", "clob", "string")) or not t:
        return "text"
    return "others"


def schema_from_sqlite(db_path: str | Path, db_id: str | None = None) -> Schema:
    """The tables, columns, primary and foreign keys of a SQLite database, opened read-only."""
    path = Path(db_path)
    if not path.is_file():
        raise DataError(f"database not found: {path}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot open the database: {exc}") from None
    try:
        names = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid")]
        tables, fks = [], []
        for name in names:
            quoted = '"' + name.replace('"', '""') + '"'
            info = conn.execute(f"PRAGMA table_info({quoted})").fetchall()  # cid, name, type, notnull, dflt, pk
            columns = [Column(row[1], coarse_type(row[2])) for row in info]
            pks = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]
            tables.append(Table(name, columns, primary_keys=pks))
            for row in conn.execute(f"PRAGMA foreign_key_list({quoted})"):  # id, seq, table, from, to, ...
                ref_table, src, dst = row[2], row[3], row[4]
                if dst is None:  # references the other table's primary key implicitly
                    ref_info = conn.execute(f"PRAGMA table_info(\"{ref_table}\")").fetchall()
                    dst = next((r[1] for r in ref_info if r[5]), None)
                if dst is not None:
                    fks.append(ForeignKey(name, src, ref_table, dst))
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    return Schema(db_id or path.stem, tables, fks)
