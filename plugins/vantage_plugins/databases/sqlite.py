"""The ``sqlite`` connector: today's behaviour behind the :class:`~vantage_core.databases.Database`
contract. Execution goes through the sandboxed worker pool of
:mod:`vantage_core.evaluate.executor` (read-only, authorizer, time/row/byte/memory limits); the SQL
runs as written, since it already is SQLite's."""

from __future__ import annotations

from pathlib import Path

from vantage_core.databases import Database, DialectResult, file_of_url
from vantage_core.errors import DataError


class SQLiteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str):
        super().__init__(url)
        self.path = file_of_url(url)
        if not Path(self.path).is_file():
            raise DataError(f"{self.path}: no such SQLite file")

    def _introspect(self):
        from vantage_core.data.schemas import schema_from_sqlite

        return schema_from_sqlite(self.path)

    def transpile(self, sql: str) -> str:
        return sql  # the model's own dialect; the sandbox's authorizer decides what may run

    def execute(self, sql, timeout_s=5.0, max_rows=10000, max_result_bytes=32 << 20, digest=False):
        from vantage_core.evaluate.executor import execute

        res = execute(self.path, sql, timeout_s, max_rows, max_result_bytes, digest)
        return DialectResult(**vars(res), sql=sql, transpiled=sql, dialect="sqlite")

    def _distinct(self, table, column, limit):
        import sqlite3

        from vantage_core.data.schemas import connect_readonly
        from vantage_core.data.sql_names import quoted

        conn = connect_readonly(self.path)
        try:
            c = quoted(column)
            rows = conn.execute(f"SELECT DISTINCT {c} FROM {quoted(table)} WHERE typeof({c}) = 'text' "
                                f"LIMIT {int(limit)}").fetchall()
        except sqlite3.DatabaseError:
            return []
        finally:
            conn.close()
        return [r[0] for r in rows if isinstance(r[0], str)]
