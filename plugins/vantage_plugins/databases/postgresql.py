"""The ``postgresql`` connector (``postgresql://user@host:port/db``, psycopg 3).

Model SQL runs as a role that can only read: a URL whose role is a superuser, may create roles
or databases, replicate, bypass row security, or may create or write anything in the database is
refused on connecting, with how to make a reader (``vantage data load-into URL --from FILE
--reader ROLE``), unless privileged roles are allowed (``--allow-privileged``, unsafe: the allow
lists are then the only guard). Before anything runs, :mod:`vantage_core.sql.policy` passes the
statement or refuses it by name.

Every statement runs in a transaction that is read-only from its first statement
(``default_transaction_read_only`` is set for the whole session, and a read-only transaction
cannot be made read-write), under ``statement_timeout`` and a client-side deadline across
fetches, and is always rolled back; then ``DISCARD ALL`` resets the session (settings, prepared
statements, advisory locks, temporary tables, cursors), so nothing one request did reaches the
next. Results are read through a server-side cursor (``DECLARE`` accepts only a query), so a huge
result never travels past the row cap.
"""

from __future__ import annotations

import time
from itertools import chain, count

from vantage_core.api import (Column, DataError, ExecutionResult, ForeignKey, QueriedDatabase, Schema, Table,
                              coarse_type, describe, fetch_bounded, plain, privileged_allowed)

# predefined roles whose members reach the server's files, programs, other sessions or all data
POWERFUL_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
                  "pg_write_all_data", "pg_signal_backend", "pg_checkpoint")
# what the URL's role may do beyond reading: one row of reasons, each NULL or a short text
PRIVILEGES_SQL = """
SELECT CASE WHEN r.rolsuper THEN 'superuser' END,
       CASE WHEN r.rolcreaterole THEN 'CREATEROLE' END,
       CASE WHEN r.rolcreatedb THEN 'CREATEDB' END,
       CASE WHEN r.rolreplication THEN 'REPLICATION' END,
       CASE WHEN r.rolbypassrls THEN 'BYPASSRLS' END,
       CASE WHEN has_database_privilege(current_database(), 'CREATE') THEN 'CREATE on the database' END,
       (SELECT 'CREATE on schema ' || min(nspname) FROM pg_namespace
        WHERE left(nspname, 3) <> 'pg_' AND nspname <> 'information_schema' AND has_schema_privilege(oid, 'CREATE')),
       (SELECT 'INSERT, UPDATE, DELETE or TRUNCATE on ' || min(c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE left(n.nspname, 3) <> 'pg_' AND n.nspname <> 'information_schema' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        AND has_table_privilege(c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE')),
       (SELECT 'USAGE or UPDATE on sequence ' || min(c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE left(n.nspname, 3) <> 'pg_' AND CASE WHEN c.relkind = 'S' THEN has_sequence_privilege(c.oid, 'USAGE, UPDATE') END),
       (SELECT 'member of ' || min(rolname) FROM pg_roles
        WHERE rolname = ANY(%s) AND pg_has_role(current_user, oid, 'USAGE'))
FROM pg_roles r WHERE r.rolname = current_user
"""
TEXT_TYPES = ("text", "character", "char", "name", "citext")
_names = count()


def conninfo_of(url: str) -> str:
    """What libpq reads: the URL without a ``+driver`` suffix (``postgresql+psycopg://``)."""
    scheme, rest = url.split("://", 1)
    return "postgresql://" + rest


class PostgreSQLDatabase(QueriedDatabase):
    dialect = "postgres"

    def __init__(self, url: str, connect_timeout_s: int = 10, work_mem: str = "64MB",
                 allow_privileged: bool | None = None):
        super().__init__(url)
        self.conninfo = conninfo_of(url)
        self.connect_timeout_s, self.work_mem = connect_timeout_s, work_mem
        self.allow_privileged = allow_privileged  # None: as privileged_allowed() says when connecting
        self._conn = None
        self._names: dict[str, str] = {}  # lower-case identifier -> as the database spells it

    def _connection(self):
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                conn = psycopg.connect(self.conninfo, connect_timeout=self.connect_timeout_s, prepare_threshold=None,
                                       options=f"-c default_transaction_read_only=on -c work_mem={self.work_mem}")
            except psycopg.Error as exc:
                raise DataError(f"{describe(self.url)}: cannot connect: {str(exc).strip()}") from None
            try:
                if not (privileged_allowed() if self.allow_privileged is None else self.allow_privileged):
                    self._refuse_privileged(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _refuse_privileged(self, conn) -> None:
        """:class:`DataError` when the connection's role can do more than read."""
        import psycopg

        try:
            row = conn.execute(PRIVILEGES_SQL, (list(POWERFUL_ROLES),)).fetchone()
            role = conn.info.user
        except psycopg.Error as exc:
            raise DataError(f"{describe(self.url)}: cannot read the role's privileges: {str(exc).strip()}") from None
        finally:
            conn.rollback()
        reasons = [r for r in (row or ()) if r]
        if reasons:
            raise DataError(
                f"{describe(self.url)}: role {role} can do more than read ({'; '.join(reasons)}); model SQL runs "
                f"as a role that can only read: load the data with `vantage data load-into URL --from FILE.sqlite "
                f"--reader ROLE` and connect as ROLE, or pass --allow-privileged (unsafe: then only the SQL "
                f"allow list stands between the model and the server)")

    def _end_request(self, conn) -> None:
        """Undo whatever a request did (never commit), then reset the session to how it connected:
        ``DISCARD ALL`` drops settings, prepared statements, cursors, temporary tables and
        advisory locks. A connection that cannot be reset is closed (the next request reconnects)."""
        import psycopg

        try:
            conn.rollback()
            conn.autocommit = True  # DISCARD ALL runs outside a transaction
            try:
                conn.execute("DISCARD ALL")
            finally:
                conn.autocommit = False
        except psycopg.Error:
            self.close()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- introspection ---------------------------------------------------------------------
    def _introspect(self) -> Schema:
        import psycopg

        conn = self._connection()
        try:
            cols = conn.execute(  # with COMMENT ON's texts of the table and the column
                "SELECT c.oid, c.relname, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), "
                "obj_description(c.oid, 'pg_class'), col_description(c.oid, a.attnum) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm') "
                "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY c.oid, a.attnum").fetchall()
            cons = conn.execute(
                "SELECT con.contype, con.conrelid, con.conkey, con.confrelid, con.confkey FROM pg_constraint con "
                "JOIN pg_namespace n ON n.oid = con.connamespace "
                "WHERE n.nspname = current_schema() AND con.contype IN ('p', 'f') ORDER BY con.oid").fetchall()
            dbname = conn.info.dbname
        except psycopg.Error as exc:
            raise DataError(f"{describe(self.url)}: cannot read the schema: {str(exc).strip()}") from None
        finally:
            self._end_request(conn)
        tables: dict[int, Table] = {}
        attname: dict[tuple[int, int], str] = {}
        for oid, rel, num, att, dtype, about_table, about in cols:
            t = tables.setdefault(oid, Table(rel, [], description=about_table or None))
            t.columns.append(Column(att, coarse_type(dtype), description=about or None))
            attname[(oid, num)] = att
            self._names.setdefault(rel.lower(), rel)
            self._names.setdefault(att.lower(), att)
            if dtype.split("(")[0].strip().lower().startswith(TEXT_TYPES):
                self._text.add((rel.lower(), att.lower()))
        fks = []
        for kind, rel, keys, ref, ref_keys in cons:
            if rel not in tables:
                continue
            names = [attname[(rel, k)] for k in keys]
            if kind == "p":
                tables[rel].primary_keys.extend(names)
            elif ref in tables:
                fks += [ForeignKey(tables[rel].name, c, tables[ref].name, attname[(ref, k)])
                        for c, k in zip(names, ref_keys)]
        return Schema(dbname, list(tables.values()), fks)

    # -- dialect ---------------------------------------------------------------------------
    def _adapt(self, tree):
        """SQLite resolves names case-insensitively, PostgreSQL folds unquoted ones to lower
        case: each identifier is written quoted, as the database spells it (aliases lower-cased)."""
        from sqlglot import exp

        self.schema()
        for ident in tree.find_all(exp.Identifier):
            ident.set("this", self._names.get(ident.name.lower(), ident.name.lower()))
            ident.set("quoted", True)
        for avg in list(tree.find_all(exp.Avg)):  # numeric's 16 digits would not equal SQLite's double
            avg.replace(exp.Cast(this=avg.copy(), to=exp.DataType.build("double")))
        return tree

    def _bare_value(self, column, extreme):
        """The first of the group's values ordered by ``x`` beside ``max(x)``/``min(x)`` (the row
        SQLite would pick), else ``MIN(column)``."""
        import sqlglot
        from sqlglot import exp

        if extreme is None:
            return exp.Min(this=column)
        direction = "DESC" if isinstance(extreme, exp.Max) else "ASC"
        return sqlglot.parse_one(f"(ARRAY_AGG({column.sql('postgres')} ORDER BY {extreme.this.sql('postgres')} "
                                 f"{direction} NULLS LAST))[1]", read="postgres")

    # -- execution -------------------------------------------------------------------------
    def _run(self, sql: str, timeout_s: float, max_rows: int, max_result_bytes: int, digest: bool) -> ExecutionResult:
        import psycopg
        from psycopg import errors

        t0 = time.perf_counter()
        try:
            conn = self._connection()
        except DataError as exc:
            return ExecutionResult(False, error=str(exc))
        deadline = t0 + timeout_s

        def batches(cur):
            while True:
                if time.perf_counter() > deadline:  # each FETCH has its own statement_timeout
                    raise errors.QueryCanceled("the deadline passed while fetching")
                rows = cur.fetchmany(1000)
                if not rows:
                    return
                yield rows

        try:
            conn.execute(f"SET LOCAL statement_timeout = {max(1, int(timeout_s * 1000))}")
            conn.execute("EXPLAIN " + sql)  # plans only: names, types and functions are checked first
            with conn.cursor(name=f"vantage_{next(_names)}") as cur:
                cur.execute(sql)
                res = fetch_bounded(chain.from_iterable(batches(cur)), max_rows, max_result_bytes, digest, plain)
        except errors.QueryCanceled:
            res = ExecutionResult(False, error=f"timed out after {timeout_s:g} s", timed_out=True)
        except psycopg.Error as exc:
            res = ExecutionResult(False, error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")
        finally:
            self._end_request(conn)
        res.elapsed = round(time.perf_counter() - t0, 4)
        return res


# ---------------------------------------------------------------------------- loading

PG_TYPES = {"integer": "bigint", "real": "double precision", "text": "text", "blob": "bytea"}


def _create_database(conninfo: str) -> None:
    """Create the URL's database when it does not exist (through the ``postgres`` database)."""
    import psycopg
    from psycopg import sql as pgsql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(conninfo)
    name = params.get("dbname")
    if not name:
        return
    with psycopg.connect(make_conninfo(**{**params, "dbname": "postgres"}), autocommit=True) as admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            admin.execute(pgsql.SQL("CREATE DATABASE {}").format(pgsql.Identifier(name)))


def load_from_sqlite(url: str, sqlite_path, replace: bool = False, reader: str | None = None):
    """Copy a SQLite file into the PostgreSQL database at ``url`` (created if missing) with COPY,
    then add its primary and foreign keys one by one (each in a savepoint: a key the data breaks
    is reported and the load goes on). ``reader``: a login role granted SELECT only."""
    import psycopg
    from psycopg import sql as pgsql

    from vantage_core.api import LoadSummary, read_sqlite

    conninfo = conninfo_of(url)
    try:
        _create_database(conninfo)
        conn = psycopg.connect(conninfo)
    except psycopg.Error as exc:
        raise DataError(f"{describe(url)}: cannot connect: {str(exc).strip()}") from None
    schema, tables = read_sqlite(sqlite_path)
    summary = LoadSummary(url)
    # lower-case names: SQLite matches names in any case, PostgreSQL folds unquoted ones to lower
    # case, so SQL written for the SQLite file (or by hand, unquoted) finds them here too
    ident = lambda name: pgsql.Identifier(name.lower())
    present = {r[0].lower() for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()").fetchall()}
    conn.rollback()  # end the check's transaction: the load below must be its own, committed one
    clash = [t.name for t in tables if t.name.lower() in present]
    if clash and not replace:
        conn.close()
        raise DataError(f"{describe(url)}: table {clash[0]} already exists; --replace drops the tables of the same "
                        f"names first")
    try:
        with conn.transaction():
            for t in tables:
                if replace:  # as loaded here (lower case), and as the source spells it
                    for name in {t.name, t.name.lower()}:
                        conn.execute(pgsql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(pgsql.Identifier(name)))
                cols = pgsql.SQL(", ").join(pgsql.SQL("{} {}").format(ident(c), pgsql.SQL(PG_TYPES[k]))
                                            for c, k in zip(t.columns, t.kinds))
                conn.execute(pgsql.SQL("CREATE TABLE {} ({})").format(ident(t.name), cols))
                with conn.cursor().copy(pgsql.SQL("COPY {} FROM STDIN").format(ident(t.name))) as copy:
                    for row in t.rows:
                        copy.write_row(tuple(v.replace("\x00", "") if isinstance(v, str) else v for v in row))
                summary.tables += 1
                summary.rows += len(t.rows)
            keys = [(t.name, pgsql.SQL("PRIMARY KEY ({})").format(pgsql.SQL(", ").join(map(ident, t.primary_keys))),
                     f"PRIMARY KEY ({', '.join(t.primary_keys)})") for t in tables if t.primary_keys]
            keys += [(fk.table, pgsql.SQL("FOREIGN KEY ({}) REFERENCES {} ({})").format(
                ident(fk.column), ident(fk.ref_table), ident(fk.ref_column)),
                f"FOREIGN KEY ({fk.column}) -> {fk.ref_table}({fk.ref_column})") for fk in schema.foreign_keys]
            for table, clause, text in keys:
                try:
                    with conn.transaction():  # a savepoint: a refused key leaves the rest in place
                        conn.execute(pgsql.SQL("ALTER TABLE {} ADD {}").format(ident(table), clause))
                    summary.keys_added += 1
                except psycopg.Error as exc:
                    summary.keys_skipped.append(f"{table}: {text}: {str(exc).strip().splitlines()[0][:120]}")
            if reader:
                _grant_reader(conn, reader, [t.name for t in tables])
    finally:
        conn.close()
    return summary


def _grant_reader(conn, role: str, tables: list[str]) -> None:
    """A login role that may read these tables and do nothing else."""
    from psycopg import sql as pgsql

    if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
        conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE").format(pgsql.Identifier(role)))
    dbname = conn.info.dbname
    conn.execute(pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(pgsql.Identifier(dbname), pgsql.Identifier(role)))
    conn.execute(pgsql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(pgsql.Identifier(role)))
    for t in tables:
        conn.execute(pgsql.SQL("GRANT SELECT ON {} TO {}").format(pgsql.Identifier(t.lower()), pgsql.Identifier(role)))
