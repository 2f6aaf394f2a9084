"""The ``sqlite`` connector (``sqlite:///path.sqlite``, or a bare file path): the SQLite sandbox
behind the :class:`~vantage_core.sql.database.Database` contract, one connector among the three
built-ins (DuckDB's and PostgreSQL's are plugins in ``plugins/vantage_plugins/databases/``, which
also registers this one). Execution goes through the sandboxed worker pool of
:mod:`vantage_core.sql.sandbox` (read-only, authorizer, time/row/byte/memory limits); the SQL runs
as written, since it already is SQLite's. The schema and the cell values are read from the file,
opened read-only, and read again once the file was written or replaced (:meth:`signature`)."""

from __future__ import annotations

from pathlib import Path

from vantage_core.errors import DataError
from vantage_core.sql import values
from vantage_core.sql.database import Database, DialectResult, file_of_url
from vantage_core.sql.result import DEFAULT_RESULT_BYTES
from vantage_core.sql.sqlite_file import file_signature, schema_from_sqlite


class SQLiteDatabase(Database):
    """A SQLite file (``sqlite:///path.sqlite``) read through the sandboxed, read-only worker pool."""

    dialect = "sqlite"

    def __init__(self, url: str):
        super().__init__(url)
        self.path = file_of_url(url)

    def signature(self) -> tuple:
        """The file's (:func:`~vantage_core.sql.sqlite_file.file_signature`)."""
        return file_signature(self.path)

    def _introspect(self):
        if not Path(self.path).is_file():
            raise DataError(f"{self.path}: no such SQLite file (or give a database URL: sqlite:///file.sqlite, "
                            f"duckdb:///file.duckdb, postgresql://user@host/db)")
        return schema_from_sqlite(self.path)

    def transpile(self, sql: str) -> str:
        return sql  # the model's own dialect; the sandbox's authorizer decides what may run

    def execute(self, sql, timeout_s=5.0, max_rows=10000, max_result_bytes=DEFAULT_RESULT_BYTES, digest=False):
        from vantage_core.sql.sandbox import execute

        res = execute(self.path, sql, timeout_s, max_rows, max_result_bytes, digest)
        return DialectResult(**vars(res), sql=sql, transpiled=sql, dialect="sqlite")

    def column_values(self, tables: tuple, per_column: int = 5000, max_chars: int = 40) -> dict:
        """Every non-null value of the named columns as text (see
        :func:`vantage_core.sql.values.column_values`; a column that cannot be read is left out)."""
        return values.column_values(self.path, tables, per_column, max_chars)

    def cased_values(self, per_column: int = 2000, max_chars: int = 60) -> dict[str, str]:
        """Every short text value of every table, lower-cased -> as stored."""
        return values.cased_values(self.path, per_column, max_chars)
