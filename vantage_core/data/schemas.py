"""Reading schemas from Spider-style ``tables.json`` entries and checking them against their
SQLite files (:mod:`vantage_core.sql.sqlite_file` reads a schema from the SQLite file itself)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from vantage_core.errors import DataError
from vantage_core.sql.schema import Column, ForeignKey, Schema, Table
from vantage_core.sql.sqlite_file import connect_readonly


def schema_from_spider_tables(entry: dict[str, Any], source: str = "tables.json") -> Schema:
    """One database entry of Spider's (or BIRD's) ``tables.json`` as a :class:`Schema`.

    Column names are the original (database) names; the natural names are kept beside them.
    Raises :class:`DataError` naming the database and the index when the entry is inconsistent.
    """
    db_id = entry.get("db_id", "?")
    try:
        tnames = entry["table_names_original"]
        tnat = entry.get("table_names") or tnames
        cols = entry["column_names_original"]
        cnat = entry.get("column_names") or cols
        ctypes = entry.get("column_types") or ["text"] * len(cols)
    except KeyError as exc:
        raise DataError(f"{source}: database {db_id!r}: missing field {exc.args[0]!r}") from None
    tables = [Table(t, [], natural_name=n) for t, n in zip(tnames, tnat)]
    col_ref: list[tuple[str, str] | None] = []
    for i, ((ti, cname), (_, nat)) in enumerate(zip(cols, cnat)):
        if ti == -1:
            col_ref.append(None)  # "*"
            continue
        if not 0 <= ti < len(tables):
            raise DataError(f"{source}: database {db_id!r}: column {i} ({cname!r}) points to table "
                            f"index {ti}, but there are {len(tables)} tables")
        tables[ti].columns.append(Column(cname, ctypes[i] if i < len(ctypes) else "text", nat))
        col_ref.append((tables[ti].name, cname))

    def ref(i: int, what: str) -> tuple[str, str]:
        if not isinstance(i, int) or not 0 <= i < len(col_ref) or col_ref[i] is None:
            raise DataError(f"{source}: database {db_id!r}: {what} names column index {i!r}, "
                            f"which is not a column (valid: 1..{len(col_ref) - 1})")
        return col_ref[i]

    for pk in entry.get("primary_keys", []):
        for i in (pk if isinstance(pk, list) else [pk]):  # composite keys are lists in newer releases
            t, c = ref(i, "primary_keys")
            next(tb for tb in tables if tb.name == t).primary_keys.append(c)
    fks = []
    for pair in entry.get("foreign_keys", []):
        (t, c), (rt, rc) = ref(pair[0], "foreign_keys"), ref(pair[1], "foreign_keys")
        fks.append(ForeignKey(t, c, rt, rc))
    return Schema(db_id, tables, fks)


def missing_in_database(schema: Schema, db_path: str | Path) -> list[str]:
    """Tables and columns ``schema`` names that the database lacks, as ``table`` or
    ``table.column`` (case-insensitive, as SQLite resolves names)."""
    conn = connect_readonly(db_path)
    try:
        actual: dict[str, set[str]] = {}
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"):
            actual[name.lower()] = {r[1].lower() for r in conn.execute(f'PRAGMA table_info("{name}")')}
    except sqlite3.DatabaseError as exc:
        return [f"(unreadable database: {exc})"]
    finally:
        conn.close()
    missing = []
    for t in schema.tables:
        cols = actual.get(t.name.lower())
        if cols is None:
            missing.append(t.name)
            continue
        missing += [f"{t.name}.{c.name}" for c in t.columns if c.name.lower() not in cols]
    return missing
