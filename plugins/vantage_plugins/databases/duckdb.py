"""The ``duckdb`` connector (``duckdb:///path.duckdb``).

Every query runs in a worker process (:class:`vantage_core.sql.sandbox.Sandbox`, the one
SQLite's sandbox uses; a pool of them shared by every DuckDB file of the same settings) that opens the file ``read_only`` with external access off (no file reads
or writes, no ATTACH, COPY, INSTALL or LOAD), extension autoloading off, no temporary directory
(nothing spills to disk), DuckDB's own ``memory_limit``, one thread, and the configuration locked
so that a query cannot ``SET`` any of it back. Around DuckDB, the worker's address space is capped
at its size plus the memory limit plus :data:`HEADROOM` (what DuckDB allocates outside its buffer
manager, a list or a string, fails there instead of growing the server), and the worker is
killed :data:`GRACE_S` past the query's deadline when DuckDB's own interrupt has not stopped it
(one function call building a huge value never checks for it). The statement reaching the worker
has passed the allow lists of :meth:`Database.transpile`. One request at a time per worker, each
worker keeping at most :data:`OPEN_FILES` files open, each answer matched to its request: concurrent callers never see each other's rows.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import threading
import time
from itertools import chain
from pathlib import Path

from vantage_core.api import (Column, DataError, ExecutionResult, ForeignKey, QueriedDatabase, SandboxPool, Schema,
                              Table, coarse_type, fetch_bounded, file_of_url, file_signature, plain, quoted)

TEXT_TYPES = ("VARCHAR", "TEXT", "STRING", "CHAR")
HEADROOM = 512 << 20  # the worker's address space past the memory limit: Python, the result, DuckDB's own
GRACE_S = 0.5  # how long past its deadline a query may run before its worker is killed
OPEN_FILES = 8  # DuckDB files a worker keeps open; the least recently used is closed past this
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def memory_bytes(limit: str) -> int:
    """The bytes a DuckDB memory limit (``1GB``, ``512MiB``) stands for; :class:`DataError` naming
    the parameter and the valid forms otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(limit))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in UNITS or float(m.group(1)) <= 0:
        raise DataError(f"duckdb memory_limit {limit!r}: give a positive size such as 512MB or 2GB "
                        f"(units: {', '.join(u.upper() for u in UNITS if u)})")
    return int(float(m.group(1)) * UNITS[unit])


class DuckDBRunner:
    """Runs queries on DuckDB files inside the sandbox's worker (see ``Sandbox``): one read-only,
    locked-down connection per file, reopened when the file changes; each statement on its own
    cursor, interrupted at its deadline by a timer (``interrupt`` is DuckDB's thread-safe cancel; a
    fresh cursor per statement keeps a late interrupt from reaching the next one)."""

    def __init__(self, memory_limit: str = "1GB", threads: int = 1):
        self.memory_limit, self.threads = memory_limit, threads
        self.connections: dict[str, tuple] = {}  # path -> (connection, the file's signature)

    def prepare(self) -> None:
        import duckdb  # noqa: F401  (loaded before the worker's memory cap is measured)

    def _connect(self, path: str):
        import duckdb

        conn, signature = self.connections.pop(path, (None, ()))
        if conn is not None and signature != file_signature(path):
            conn.close()
            conn = None
        if conn is None:
            config = {"memory_limit": self.memory_limit, "threads": self.threads, "enable_external_access": False,
                      "autoinstall_known_extensions": False, "autoload_known_extensions": False,
                      "allow_community_extensions": False, "allow_persistent_secrets": False,
                      "temp_directory": "", "integer_division": True,  # SQLite: 5 / 2 = 2
                      "lock_configuration": True}
            signature = file_signature(path)
            conn = duckdb.connect(path, read_only=True, config=config)
        self.connections[path] = (conn, signature)
        while len(self.connections) > OPEN_FILES:  # the least recently used first
            self.connections.pop(next(iter(self.connections)))[0].close()
        return conn

    def run(self, path: str, sql: str, timeout_s: float, max_rows: int, max_result_bytes: int,
            digest: bool) -> ExecutionResult:
        import duckdb

        t0 = time.perf_counter()
        try:
            cur = self._connect(path).cursor()
        except duckdb.Error as exc:
            return ExecutionResult(False, error=f"cannot open {Path(path).name} with DuckDB: {_first_line(exc)}")
        timer = threading.Timer(timeout_s, cur.interrupt)
        timer.start()
        try:
            cur.execute("EXPLAIN " + sql)  # plans only: names, types and functions are checked first
            cur.execute(sql)
            rows = chain.from_iterable(iter(lambda: cur.fetchmany(1000), []))
            res = fetch_bounded(rows, max_rows, max_result_bytes, digest, plain)
        except duckdb.InterruptException:
            res = ExecutionResult(False, error=f"timed out after {timeout_s:g} s", timed_out=True)
        except duckdb.Error as exc:
            res = ExecutionResult(False, error=f"{type(exc).__name__}: {_first_line(exc)}")
        finally:
            timer.cancel()
            cur.close()
        res.elapsed = round(time.perf_counter() - t0, 4)
        return res


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


_WORKERS: dict[tuple, SandboxPool] = {}
_WORKERS_LOCK = threading.Lock()


def shared_workers(memory_limit: str, threads: int) -> SandboxPool:
    """This process's pool of DuckDB workers for these settings, shared by every connector that
    uses them: a server with a hundred DuckDB files starts as many workers as it runs queries at
    once (at most the pool's size), not one per file."""
    key = (os.getpid(), memory_limit, threads)
    with _WORKERS_LOCK:
        if key not in _WORKERS:
            _WORKERS[key] = SandboxPool(mem_bytes=memory_bytes(memory_limit) + HEADROOM, grace_s=GRACE_S,
                                        runner=DuckDBRunner(memory_limit, threads))
            atexit.register(_WORKERS[key].close)
        return _WORKERS[key]


class DuckDBDatabase(QueriedDatabase):
    dialect = "duckdb"

    def __init__(self, url: str, memory_limit: str = "1GB", threads: int = 1):
        super().__init__(url)
        self.path = file_of_url(url)
        if not Path(self.path).is_file():
            raise DataError(f"{self.path}: no such DuckDB file")
        self.memory_limit, self.threads = memory_limit, threads
        self.sandbox = shared_workers(memory_limit, threads)

    def close(self) -> None:
        """Nothing of this file's is held here: the workers are shared with every DuckDB
        connector of the same settings, and stop when the process exits."""

    # -- introspection ---------------------------------------------------------------------
    def _rows(self, sql: str) -> list[tuple]:
        """Rows of a catalog query run in the worker; :class:`DataError` when it fails."""
        res = self._run(sql, 30.0, 1 << 20, 1 << 28, False)
        if not res.ok:
            raise DataError(f"{Path(self.path).name}: cannot read the schema with DuckDB: {res.error}")
        return res.rows

    def _introspect(self) -> Schema:
        tables = {n: Table(n, [], description=about or None) for n, about in self._rows(
            "SELECT table_name, comment FROM duckdb_tables() WHERE schema_name = 'main' AND NOT internal "
            "ORDER BY table_oid")}  # comment: COMMENT ON TABLE's text
        for t, c, dtype, about in self._rows(
                "SELECT table_name, column_name, data_type, comment FROM duckdb_columns() WHERE schema_name = 'main' "
                "ORDER BY table_oid, column_index"):
            if t in tables:
                tables[t].columns.append(Column(c, coarse_type(dtype), description=about or None))
                if any(k in dtype.upper() for k in TEXT_TYPES):
                    self._text.add((t.lower(), c.lower()))
        fks = []
        for t, kind, cols, ref_t, ref_cols in self._rows(
                "SELECT table_name, constraint_type, to_json(constraint_column_names)::VARCHAR, referenced_table, "
                "to_json(referenced_column_names)::VARCHAR FROM duckdb_constraints() WHERE schema_name = 'main' "
                "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')"):
            if t not in tables:
                continue
            if kind == "PRIMARY KEY":
                tables[t].primary_keys.extend(json.loads(cols))
            else:
                fks += [ForeignKey(t, c, ref_t, rc) for c, rc in zip(json.loads(cols), json.loads(ref_cols or "[]"))]
        return Schema(Path(self.path).stem, list(tables.values()), fks)

    # -- execution -------------------------------------------------------------------------
    def _bare_value(self, column, extreme):
        """``arg_max(column, x)`` beside ``max(x)``: the value of the row SQLite would pick."""
        from sqlglot import exp

        if extreme is None:
            return exp.Anonymous(this="ANY_VALUE", expressions=[column])
        name = "ARG_MAX" if isinstance(extreme, exp.Max) else "ARG_MIN"
        return exp.Anonymous(this=name, expressions=[column, extreme.this.copy()])

    def _run(self, sql: str, timeout_s: float, max_rows: int, max_result_bytes: int, digest: bool) -> ExecutionResult:
        return self.sandbox.execute(self.path, sql, timeout_s, max_rows, max_result_bytes, digest)


# ---------------------------------------------------------------------------- loading

DUCK_TYPES = {"integer": "BIGINT", "real": "DOUBLE", "text": "VARCHAR", "blob": "BLOB"}


def load_from_sqlite(url: str, sqlite_path, replace: bool = False, reader=None):
    """Copy a SQLite file into the DuckDB file at ``url`` (created if missing), keys included:
    DuckDB takes keys only in CREATE TABLE, so each table is created with its primary key and the
    foreign keys whose targets have one, and created again with fewer where the data breaks them."""
    import duckdb

    from vantage_core.api import LoadSummary, creation_order, read_sqlite

    path = file_of_url(url)
    schema, tables = read_sqlite(sqlite_path)
    by_name = {t.name: t for t in tables}
    summary = LoadSummary(url)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = duckdb.connect(path)
    try:
        if reader:
            summary.keys_skipped.append(f"--reader {reader}: DuckDB has no roles (the file is opened read-only)")
        order = creation_order(schema)
        present = {r[0].lower() for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        clash = [n for n in order if n.lower() in present]
        if clash and not replace:
            raise DataError(f"{url}: table {clash[0]} already exists; --replace drops the tables of the same names first")
        if replace:  # referencing tables first: DuckDB refuses to drop a table others reference
            for name in reversed(order):
                conn.execute(f"DROP TABLE IF EXISTS {quoted(name)}")
        pk_of: dict[str, list[str]] = {}
        for name in order:
            t = by_name[name]
            fks = [fk for fk in schema.foreign_keys if fk.table == name and fk.ref_table in pk_of
                   and [fk.ref_column.lower()] == [c.lower() for c in pk_of[fk.ref_table]]]
            for attempt in ((True, fks), (True, []), (False, [])):
                pk, keys = attempt[0] and bool(t.primary_keys), attempt[1]
                try:
                    _duck_create(conn, t, pk, keys)
                    _duck_insert(conn, t)
                    break
                except duckdb.Error as exc:
                    conn.execute(f"DROP TABLE IF EXISTS {quoted(name)}")
                    why = str(exc).splitlines()[0][:120]
                    if pk and keys:
                        summary.keys_skipped += [f"{name}: FOREIGN KEY ({fk.column}) -> {fk.ref_table}: {why}" for fk in keys]
                    elif pk:
                        summary.keys_skipped.append(f"{name}: PRIMARY KEY ({', '.join(t.primary_keys)}): {why}")
                    else:
                        raise DataError(f"{url}: cannot load table {name}: {why}") from None
            if pk:
                pk_of[name] = t.primary_keys
            summary.keys_added += int(pk) + len(keys)
            summary.tables += 1
            summary.rows += len(t.rows)
        conn.execute("CHECKPOINT")
    finally:
        conn.close()
    return summary


def _duck_create(conn, t, pk: bool, fks) -> None:
    cols = [f"{quoted(c)} {DUCK_TYPES[k]}" for c, k in zip(t.columns, t.kinds)]
    if pk:
        cols.append(f"PRIMARY KEY ({', '.join(quoted(c) for c in t.primary_keys)})")
    cols += [f"FOREIGN KEY ({quoted(fk.column)}) REFERENCES {quoted(fk.ref_table)} ({quoted(fk.ref_column)})"
             for fk in fks]
    conn.execute(f"CREATE TABLE {quoted(t.name)} ({', '.join(cols)})")


def _duck_insert(conn, t) -> None:
    """All rows at once through Arrow (row-by-row inserts are slow in DuckDB)."""
    import pyarrow as pa

    if not t.rows:
        return
    arrow = {"integer": pa.int64(), "real": pa.float64(), "text": pa.string(), "blob": pa.binary()}
    data = pa.table({f"c{i}": pa.array([r[i] for r in t.rows], type=arrow[k]) for i, k in enumerate(t.kinds)})
    conn.register("vantage_source", data)
    try:
        conn.execute(f"INSERT INTO {quoted(t.name)} SELECT * FROM vantage_source")
    finally:
        conn.unregister("vantage_source")
