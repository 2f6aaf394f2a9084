"""Built-in database connectors (the ``database`` kind), one per URL scheme.

``sqlite`` (:mod:`vantage_core.sql.sqlite`: the sandboxed worker pool of ``vantage_core.sql.sandbox``),
``duckdb`` (:mod:`.duckdb`: the file opened read-only, external access off, a memory limit, an
interrupt at the deadline) and ``postgresql`` (:mod:`.postgresql`, psycopg 3: a read-only
transaction, ``statement_timeout``, a server-side cursor read up to the row cap).
``vantage_core/hookspecs.py`` (``register_databases``) states the contract a connector meets.
"""

from __future__ import annotations

from vantage_core.api import hookimpl


def _sqlite(url: str, **params):
    """SQLite files (sqlite:///path): the sandboxed, read-only worker pool."""
    from vantage_core.api import SQLiteDatabase

    return SQLiteDatabase(url, **params)


def _duckdb(url: str, memory_limit: str = "1GB", threads: int = 1):
    """DuckDB files (duckdb:///path), opened read-only with a memory limit and a time limit."""
    from vantage_plugins.databases.duckdb import DuckDBDatabase

    return DuckDBDatabase(url, memory_limit=memory_limit, threads=threads)


def _postgresql(url: str):
    """PostgreSQL (postgresql://user@host/db, psycopg 3): read-only transactions, statement_timeout."""
    from vantage_plugins.databases.postgresql import PostgreSQLDatabase

    return PostgreSQLDatabase(url)


def _load_duckdb(url, sqlite_path, replace=False, reader=None):
    from vantage_plugins.databases.duckdb import load_from_sqlite

    return load_from_sqlite(url, sqlite_path, replace=replace, reader=reader)


def _load_postgresql(url, sqlite_path, replace=False, reader=None):
    from vantage_plugins.databases.postgresql import load_from_sqlite

    return load_from_sqlite(url, sqlite_path, replace=replace, reader=reader)


# `vantage data load-into` finds a connector's loader on its factory (vantage_core/data/load_into.py)
_duckdb.load_from_sqlite = _load_duckdb
_postgresql.load_from_sqlite = _load_postgresql


@hookimpl
def register_databases(register):
    register("sqlite", _sqlite)
    register("duckdb", _duckdb)
    register("postgresql", _postgresql)
