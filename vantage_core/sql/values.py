"""Distinct cell values of a column: the one query every reader uses (:func:`distinct_query`),
and what the schema linker, the value writer and the schema text read from a SQLite file.

Which values a reader keeps (``keep``): ``any`` non-null value; ``text``: values stored as text
(SQLite's ``typeof``); ``nonblank``: non-null values that are not empty once trimmed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from vantage_core.sql.names import quoted
from vantage_core.sql.sqlite_file import connect_readonly

KEEP = {
    "any": "{c} IS NOT NULL",
    "text": "typeof({c}) = 'text'",  # SQLite only
    "nonblank": "{c} IS NOT NULL AND TRIM(CAST({c} AS TEXT)) != ''",
}


def distinct_query(table: str, column: str, limit: int, keep: str = "any") -> str:
    """``SELECT DISTINCT`` of up to ``limit`` values of one column that ``keep`` keeps."""
    if keep not in KEEP:
        raise ValueError(f"keep {keep!r}: valid are {', '.join(KEEP)}")
    c = quoted(column)
    return f"SELECT DISTINCT {c} FROM {quoted(table)} WHERE {KEEP[keep].format(c=c)} LIMIT {int(limit)}"


def distinct_values(conn: sqlite3.Connection, table: str, column: str, limit: int,
                    keep: str = "any") -> list[Any] | None:
    """Up to ``limit`` distinct values of a column of an open SQLite database (see
    :func:`distinct_query`); None when the column cannot be read."""
    try:
        return [row[0] for row in conn.execute(distinct_query(table, column, limit, keep)).fetchall()]
    except sqlite3.DatabaseError:
        return None


def column_values(db_path: str | Path, tables: tuple, per_column: int, max_chars: int) -> dict[tuple[str, str], list[str]]:
    """Every non-null value of the named columns as text, at most ``max_chars`` long:
    ``tables`` is ``((table, (column, ...)), ...)``; the answer ``(table, column)`` lower-cased ->
    values, without the columns that cannot be read."""
    out: dict[tuple[str, str], list[str]] = {}
    conn = connect_readonly(db_path)
    try:
        for table, cols in tables:
            for col in cols:
                vals = distinct_values(conn, table, col, per_column)
                if vals is not None:
                    out[(table.lower(), col.lower())] = [str(v) for v in vals if len(str(v)) <= max_chars]
    finally:
        conn.close()
    return out


def cased_values(db_path: str | Path, per_column: int, max_chars: int) -> dict[str, str]:
    """Every text value of every table at most ``max_chars`` long, lower-cased -> as stored (the
    first spelling met wins)."""
    out: dict[str, str] = {}
    conn = connect_readonly(db_path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            try:
                cols = [r[1] for r in conn.execute(f"PRAGMA table_info({quoted(t)})")]
            except sqlite3.DatabaseError:
                continue
            for c in cols:
                for v in distinct_values(conn, t, c, per_column, keep="text") or ():
                    if isinstance(v, str) and len(v) <= max_chars:
                        out.setdefault(v.lower(), v)
    finally:
        conn.close()
    return out


def sample_values(db_path: str | Path, table: str, column: str, k: int, max_chars: int = 24) -> list[str]:
    """Up to ``k`` distinct non-blank values of a column, shortest first (they cost fewer tokens),
    each cut to ``max_chars`` (read from the first 200)."""
    if k <= 0:
        return []
    conn = connect_readonly(db_path)
    try:
        vals = distinct_values(conn, table, column, 200, keep="nonblank") or []
    finally:
        conn.close()
    return sorted({str(v)[:max_chars] for v in vals}, key=lambda v: (len(v), v))[:k]
