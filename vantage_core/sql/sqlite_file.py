"""A SQLite file opened read-only without leaving anything beside it (:func:`readonly_uri`,
:func:`connect_readonly`), what tells that it changed (:func:`file_signature`), and its
:class:`~vantage_core.sql.schema.Schema` read from the file itself (:func:`schema_from_sqlite`)."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

from vantage_core.errors import DataError
from vantage_core.sql.names import quoted
from vantage_core.sql.schema import Column, ForeignKey, Schema, Table, coarse_type


def is_wal_file(path: str | Path) -> bool:
    """Whether a SQLite file is in WAL mode (bytes 18 and 19 of its header are 2)."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    return len(header) == 20 and header[18] == 2 and header[19] == 2


def readonly_uri(path: str | Path) -> str:
    """The URI that opens a SQLite file read-only without creating anything beside it.

    ``mode=ro`` alone still creates ``-wal`` and ``-shm`` files beside a WAL-mode database (and
    cannot remove them on close). A WAL-mode file with no ``-wal`` beside it has every committed
    page in the file and no connection open on it, so it is opened ``immutable=1``: no locks, no
    shared memory, no files. Otherwise a writer may hold pages in its ``-wal``, and ``mode=ro``
    reads through the files that writer already made."""
    full = os.path.abspath(path)
    uri = "file:" + urllib.parse.quote(full) + "?mode=ro"
    if is_wal_file(full) and not os.path.exists(full + "-wal"):
        uri += "&immutable=1"
    return uri


def file_signature(path: str | Path) -> tuple:
    """What changes when a file is written or replaced (inode, size, modification time) and
    whether a ``-wal`` file is beside it: a connection opened before such a change is reopened."""
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return st.st_ino, st.st_size, st.st_mtime_ns, os.path.exists(str(path) + "-wal")


def connect_readonly(db_path: str | Path, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A read-only connection (:func:`readonly_uri`): data loading never writes to a dataset's
    databases, nor leaves files beside them."""
    path = Path(db_path)
    if not path.is_file():
        raise DataError(f"{path}: database file not found")
    conn = sqlite3.connect(readonly_uri(path), uri=True, timeout=timeout_s,
                           check_same_thread=False)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")  # Spider has a few latin-1 cells
    return conn


QUOTES = {'"': '"', "'": "'", "`": "`", "[": "]"}


def split_comment(line: str) -> tuple[str, str]:
    """A line of SQL -> (its code, the text of its ``--`` comment, "" for none); a ``--`` inside
    quotes or brackets is code."""
    i = 0
    while i < len(line):
        ch = line[i]
        if ch in QUOTES:
            end = line.find(QUOTES[ch], i + 1)
            i = len(line) if end < 0 else end + 1
        elif line.startswith("--", i):
            return line[:i], line[i + 2:].strip()
        else:
            i += 1
    return line, ""


def first_name(code: str) -> str:
    """The first name a line of a column list defines (quoted or bare), without its quotes."""
    code = code.strip().lstrip("(,").strip()
    if code[:1] in QUOTES:
        end = code.find(QUOTES[code[0]], 1)
        return code[1:end] if end > 0 else ""
    return code.split(None, 1)[0].rstrip(",") if code else ""


def ddl_comments(create: str, columns: list[str]) -> tuple[str | None, dict[str, str]]:
    """The ``--`` comments of a ``CREATE TABLE`` statement as descriptions: the one on the line
    that says ``CREATE TABLE`` describes the table, the one on a column's line (the line that
    begins with its name) that column. Comment-only lines (code commented out) are not read."""
    by_name = {c.lower(): c for c in columns}
    table, found = None, {}
    for n, line in enumerate(create.splitlines()):
        code, comment = split_comment(line)
        if not comment or not code.strip():
            continue
        if n == 0:
            table = comment
            continue
        column = by_name.get(first_name(code).lower())
        if column is not None and column not in found:
            found[column] = comment
    return table, found


def schema_from_sqlite(db_path: str | Path, db_id: str | None = None) -> Schema:
    """The tables, columns, primary and foreign keys of a SQLite database, opened read-only."""
    path = Path(db_path)
    if not path.is_file():
        raise DataError(f"database not found: {path}")
    try:
        conn = sqlite3.connect(readonly_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise DataError(f"{path}: cannot open the database: {exc}") from None
    try:
        ddl = dict(conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"))
        tables, fks = [], []
        for name, create in ddl.items():
            info = conn.execute(f"PRAGMA table_info({quoted(name)})").fetchall()  # cid, name, type, notnull, dflt, pk
            about, about_column = ddl_comments(create or "", [row[1] for row in info])
            columns = [Column(row[1], coarse_type(row[2]), description=about_column.get(row[1])) for row in info]
            pks = [row[1] for row in sorted(info, key=lambda r: r[5]) if row[5]]
            tables.append(Table(name, columns, primary_keys=pks, description=about))
            for row in conn.execute(f"PRAGMA foreign_key_list({quoted(name)})"):  # id, seq, table, from, to, ...
                ref_table, src, dst = row[2], row[3], row[4]
                if dst is None:  # references the other table's primary key implicitly
                    ref_info = conn.execute(f"PRAGMA table_info({quoted(ref_table)})").fetchall()
                    dst = next((r[1] for r in ref_info if r[5]), None)
                if dst is not None:
                    fks.append(ForeignKey(name, src, ref_table, dst))
    except sqlite3.DatabaseError as exc:
        raise DataError(f"{path}: not a readable SQLite database: {exc}") from None
    finally:
        conn.close()
    return Schema(db_id or path.stem, tables, fks)
