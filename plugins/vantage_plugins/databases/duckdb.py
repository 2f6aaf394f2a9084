"""The ``duckdb`` connector (``duckdb:///path.duckdb``).

The file is opened ``read_only`` with external access off (no file reads or writes, no
ATTACH, COPY, INSTALL or LOAD), extension autoloading off, a memory limit and one thread, and
the configuration locked so that a query cannot ``SET`` any of it back. Each statement runs on
its own cursor, interrupted at the deadline by a timer (``interrupt`` is DuckDB's thread-safe
cancel; a fresh cursor per statement keeps a late interrupt from reaching the next one).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from vantage_core.data.example import Column, ForeignKey, Schema, Table
from vantage_core.data.sqlite_schema import coarse_type
from vantage_core.databases import QueriedDatabase, fetch_bounded, file_of_url, quote_ident
from vantage_core.errors import DataError
from vantage_core.evaluate.executor import ExecutionResult

# table functions that read outside the database (refused even though external access is off)
DENIED = frozenset({"read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
                    "read_text", "read_blob", "glob", "sniff_csv", "duckdb_secrets", "getenv", "query", "query_table"})
TEXT_TYPES = ("VARCHAR", "TEXT", "STRING", "CHAR")


class DuckDBDatabase(QueriedDatabase):
    denied, engine = DENIED, "DuckDB"
    dialect = "duckdb"

    def __init__(self, url: str, memory_limit: str = "1GB", threads: int = 1):
        super().__init__(url)
        self.path = file_of_url(url)
        if not Path(self.path).is_file():
            raise DataError(f"{self.path}: no such DuckDB file")
        self.memory_limit, self.threads = memory_limit, threads
        self._conn = None

    def _connection(self):
        import duckdb

        if self._conn is None:
            config = {"memory_limit": self.memory_limit, "threads": self.threads, "enable_external_access": False,
                      "autoinstall_known_extensions": False, "autoload_known_extensions": False,
                      "integer_division": True, "lock_configuration": True}  # SQLite: 5 / 2 = 2
            try:
                self._conn = duckdb.connect(self.path, read_only=True, config=config)
            except duckdb.Error as exc:
                raise DataError(f"{self.path}: cannot open it with DuckDB: {exc}") from None
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- introspection ---------------------------------------------------------------------
    def _introspect(self) -> Schema:
        conn = self._connection()
        names = [r[0] for r in conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND NOT internal "
            "ORDER BY table_oid").fetchall()]
        tables = {n: Table(n, []) for n in names}
        for t, c, dtype in conn.execute(
                "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE schema_name = 'main' "
                "ORDER BY table_oid, column_index").fetchall():
            if t in tables:
                tables[t].columns.append(Column(c, coarse_type(dtype)))
                if any(k in dtype.upper() for k in TEXT_TYPES):
                    self._text.add((t.lower(), c.lower()))
        fks = []
        for t, kind, cols, ref_t, ref_cols in conn.execute(
                "SELECT table_name, constraint_type, constraint_column_names, referenced_table, "
                "referenced_column_names FROM duckdb_constraints() WHERE schema_name = 'main' "
                "AND constraint_type IN ('PRIMARY KEY', 'FOREIGN KEY')").fetchall():
            if t not in tables:
                continue
            if kind == "PRIMARY KEY":
                tables[t].primary_keys.extend(cols)
            else:
                fks += [ForeignKey(t, c, ref_t, rc) for c, rc in zip(cols, ref_cols or [])]
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
        import duckdb

        cur = self._connection().cursor()
        timer = threading.Timer(timeout_s, cur.interrupt)
        t0 = time.perf_counter()
        timer.start()
        try:
            cur.execute("EXPLAIN " + sql)  # plans only: names, types and functions are checked first
            cur.execute(sql)
            res = fetch_bounded(iter(lambda: cur.fetchmany(1000), []), max_rows, max_result_bytes, digest)
        except duckdb.InterruptException:
            res = ExecutionResult(False, error=f"timed out after {timeout_s:g} s", timed_out=True)
        except duckdb.Error as exc:
            res = ExecutionResult(False, error=f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
        finally:
            timer.cancel()
            cur.close()
        res.elapsed = round(time.perf_counter() - t0, 4)
        return res


# ---------------------------------------------------------------------------- loading

DUCK_TYPES = {"integer": "BIGINT", "real": "DOUBLE", "text": "VARCHAR", "blob": "BLOB"}


def load_from_sqlite(url: str, sqlite_path, replace: bool = False, reader=None):
    """Copy a SQLite file into the DuckDB file at ``url`` (created if missing), keys included:
    DuckDB takes keys only in CREATE TABLE, so each table is created with its primary key and the
    foreign keys whose targets have one, and created again with fewer where the data breaks them."""
    import duckdb

    from vantage_core.data.load_into import LoadSummary, creation_order, read_sqlite

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
                conn.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")
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
                    conn.execute(f"DROP TABLE IF EXISTS {quote_ident(name)}")
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
    cols = [f"{quote_ident(c)} {DUCK_TYPES[k]}" for c, k in zip(t.columns, t.kinds)]
    if pk:
        cols.append(f"PRIMARY KEY ({', '.join(quote_ident(c) for c in t.primary_keys)})")
    cols += [f"FOREIGN KEY ({quote_ident(fk.column)}) REFERENCES {quote_ident(fk.ref_table)} ({quote_ident(fk.ref_column)})"
             for fk in fks]
    conn.execute(f"CREATE TABLE {quote_ident(t.name)} ({', '.join(cols)})")


def _duck_insert(conn, t) -> None:
    """All rows at once through Arrow (row-by-row inserts are slow in DuckDB)."""
    import pyarrow as pa

    if not t.rows:
        return
    arrow = {"integer": pa.int64(), "real": pa.float64(), "text": pa.string(), "blob": pa.binary()}
    data = pa.table({f"c{i}": pa.array([r[i] for r in t.rows], type=arrow[k]) for i, k in enumerate(t.kinds)})
    conn.register("vantage_source", data)
    try:
        conn.execute(f"INSERT INTO {quote_ident(t.name)} SELECT * FROM vantage_source")
    finally:
        conn.unregister("vantage_source")
