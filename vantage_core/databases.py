"""Databases by URL: the contract a ``database`` plugin implements, and how a URL finds one.

The model writes SQLite SQL (it was trained on it). A :class:`Database` connector reads a
database's schema and cell values, and runs that SQL on its own engine: it transpiles it with
sqlglot to the engine's dialect, checks it there (``EXPLAIN``) and executes it read-only, bounded
in time, rows, bytes and memory. Built-ins (``plugins/vantage_plugins/databases/``): ``sqlite``,
``duckdb`` and ``postgresql``; a plugin adds another engine with ``register_databases``
(``vantage_core/hookspecs.py``).

A database is named by a URL whose scheme is the connector's registered name:
``sqlite:///relative.sqlite``, ``sqlite:////absolute/path.sqlite`` (SQLAlchemy's convention: the
path follows the third slash), ``duckdb:///file.duckdb``, ``postgresql://user@host:5432/db``
(``postgres://`` and ``postgresql+psycopg://`` mean the same). A bare file path still means SQLite.
"""

from __future__ import annotations

import datetime
import decimal
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from vantage_core.data.example import Schema
from vantage_core.errors import DataError, VantageError
from vantage_core.evaluate.executor import ExecutionResult, _ResultHasher, _row_bytes

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9.\-]*)(\+[A-Za-z0-9_.\-]+)?://")
ALIASES = {"postgres": "postgresql"}
# the statements a connector runs: one query that only reads (sqlglot's expression classes)
READ_STATEMENTS = ("Select", "Union", "Intersect", "Except", "Values")
DEFAULT_RESULT_BYTES = 32 << 20


@dataclass
class DialectResult(ExecutionResult):
    """An :class:`ExecutionResult` that also says what ran: the SQL as given (SQLite's dialect) and
    as transpiled to the engine's."""

    sql: str = ""
    transpiled: str = ""
    dialect: str = "sqlite"


def is_url(target: Any) -> bool:
    """Whether ``target`` is a database URL (``scheme://...``) rather than a file path."""
    return isinstance(target, str) and bool(URL_SCHEME.match(target))


def url_scheme(url: str) -> str:
    """The connector name a URL selects: its scheme, lower-cased, without a ``+driver`` suffix."""
    m = URL_SCHEME.match(url)
    if not m:
        raise DataError(f"{url!r}: not a database URL; write scheme://... (sqlite:///file.sqlite, "
                        f"duckdb:///file.duckdb, postgresql://user@host/db) or a SQLite file path")
    scheme = m.group(1).lower()
    return ALIASES.get(scheme, scheme)


def file_of_url(url: str) -> str:
    """The file a ``scheme:///path`` URL names (SQLAlchemy's convention: ``sqlite:///rel.sqlite``
    is relative, ``sqlite:////abs.sqlite`` absolute); the query string is dropped."""
    rest = URL_SCHEME.sub("", url, count=1).split("?", 1)[0]
    if not rest.startswith("/"):
        raise DataError(f"{url!r}: a file database's URL is scheme:///path (three slashes, then the path; "
                        f"four for an absolute path)")
    path = rest[1:]
    if not path:
        raise DataError(f"{url!r}: names no file; write {url_scheme(url)}:///path/to/file")
    return path


def describe(target: Any) -> str:
    """A database for messages: the URL without a password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", str(target))


class Database:
    """Base class of connectors: one database, named by ``url``.

    A subclass sets ``dialect`` (sqlglot's name for its SQL) and implements ``_introspect``,
    ``_distinct``, ``_explain`` and ``_run``; this class adds what every engine shares: turning
    the model's SQLite SQL into the engine's (one read-only statement, or an error), the bounded
    cell values the schema linker reads, and the schema cache.
    """

    dialect = "sqlite"

    def __init__(self, url: str):
        self.url = url
        self._schema: Schema | None = None
        self._lock = threading.Lock()  # one statement at a time per connection

    # -- the four duties -------------------------------------------------------------------
    def schema(self) -> Schema:
        """Tables, columns (Spider's coarse types), primary and foreign keys (read once)."""
        if self._schema is None:
            self._schema = self._introspect()
        return self._schema

    def transpile(self, sql: str) -> str:
        """``sql`` (SQLite's dialect) in the engine's dialect; :class:`DataError` when it is not
        exactly one statement that only reads."""
        import sqlglot
        from sqlglot.errors import ParseError

        try:
            trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
        except ParseError as exc:
            raise DataError(f"cannot parse the SQL: {str(exc).splitlines()[0]}") from None
        if len(trees) != 1:
            raise DataError(f"give exactly one statement, got {len(trees)}")
        kind = type(trees[0]).__name__
        if kind not in READ_STATEMENTS:
            raise DataError(f"only queries that read are run (SELECT, UNION, ...); this is {kind.upper()}")
        self._check_tree(trees[0])
        return self._adapt(self._sqlite_semantics(trees[0])).sql(dialect=self.dialect)

    def execute(self, sql: str, timeout_s: float = 5.0, max_rows: int = 10000,
                max_result_bytes: int = DEFAULT_RESULT_BYTES, digest: bool = False) -> DialectResult:
        """Run ``sql`` (SQLite's dialect) read-only: transpiled, checked, then executed within
        ``timeout_s``, ``max_rows`` rows and ``max_result_bytes`` bytes. Never raises for bad SQL:
        the result says what went wrong."""
        out = DialectResult(False, sql=sql, dialect=self.dialect)
        try:
            out.transpiled = self.transpile(sql)
        except DataError as exc:
            out.error = str(exc)
            return out
        with self._lock:
            res = self._run(out.transpiled, timeout_s, max_rows, max_result_bytes, digest)
        for name in ExecutionResult.__dataclass_fields__:
            setattr(out, name, getattr(res, name))
        return out

    def column_values(self, tables: tuple, per_column: int = 5000, max_chars: int = 40) -> dict:
        """Distinct text values per column for the schema linker: ``tables`` is ``((table,
        (column, ...)), ...)``; returns ``(table, column)`` lower-cased -> raw values (at most
        ``per_column`` each, each at most ``max_chars`` long)."""
        out = {}
        for table, cols in tables:
            for col in cols:
                vals = self._distinct(table, col, per_column)
                out[(table.lower(), col.lower())] = [v for v in vals if len(v) <= max_chars]
        return out

    def cased_values(self, per_column: int = 2000, max_chars: int = 60) -> dict[str, str]:
        """Every short text value, lower-cased -> as stored (``per_column`` per column)."""
        out: dict[str, str] = {}
        for t in self.schema().tables:
            for c in t.columns:
                for v in self._distinct(t.name, c.name, per_column):
                    if len(v) <= max_chars:
                        out.setdefault(v.lower(), v)
        return out

    def close(self) -> None:
        """Release connections (the connector may be used again: it reconnects)."""

    # -- what a subclass provides ------------------------------------------------------------
    def _introspect(self) -> Schema:
        raise NotImplementedError

    def _distinct(self, table: str, column: str, limit: int) -> list[str]:
        """Up to ``limit`` distinct non-null text values of a column (``[]`` when unreadable)."""
        raise NotImplementedError

    def _run(self, sql: str, timeout_s: float, max_rows: int, max_result_bytes: int,
             digest: bool) -> ExecutionResult:
        raise NotImplementedError

    def _sqlite_semantics(self, tree: Any) -> Any:
        """What SQLite means that sqlglot keeps as written: a double-quoted word that names no
        table or column is a string (``WHERE name = "Bob"``), and ``LIKE`` ignores case."""
        from sqlglot import exp

        known = {t.name.lower() for t in self.schema().tables}
        known |= {c.name.lower() for t in self.schema().tables for c in t.columns}
        known |= {a.alias.lower() for a in tree.find_all(exp.Alias, exp.TableAlias) if a.alias}
        known |= {cte.alias.lower() for cte in tree.find_all(exp.CTE) if cte.alias}
        for col in list(tree.find_all(exp.Column)):
            ident = col.this
            if isinstance(ident, exp.Identifier) and ident.quoted and not col.table and ident.name.lower() not in known:
                col.replace(exp.Literal.string(ident.name))
        for like in list(tree.find_all(exp.Like)):
            like.replace(exp.ILike(this=like.this, expression=like.expression))
        return tree

    def _check_tree(self, tree: Any) -> None:
        """Refuse a statement the engine would run but must not (a subclass names its dangerous
        functions); raises :class:`DataError`."""

    def _adapt(self, tree: Any) -> Any:
        """The parsed SQLite statement adjusted for the engine before it is written out."""
        return tree


def refuse_functions(tree: Any, denied: frozenset[str], engine: str) -> None:
    """:class:`DataError` when the statement calls one of ``denied`` (lower-case names)."""
    from sqlglot import exp

    for node in tree.find_all(exp.Func):
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
        if name in denied:
            raise DataError(f"function {name}() is not allowed on {engine} (it reaches outside the data)")


def refuse_huge_strings(tree: Any, limit: int = 100_000_000) -> None:
    """:class:`DataError` when a string-building function is asked for more than ``limit``
    characters by a literal (SQLite's sandbox caps lengths with ``SQLITE_LIMIT_LENGTH``; other
    engines allocate such a string before any interrupt can stop them)."""
    from sqlglot import exp

    for node in tree.find_all(exp.Func):
        name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
        if name not in {"repeat", "lpad", "rpad", "randomblob", "zeroblob", "space", "replicate"}:
            continue
        for lit in node.find_all(exp.Literal):
            if not lit.is_string:
                try:
                    n = float(lit.this)
                except ValueError:
                    continue
                if n > limit:
                    raise DataError(f"{name}() of {lit.this} characters: over the limit of {limit}")


def quote_ident(name: str) -> str:
    """A double-quoted SQL identifier (PostgreSQL, DuckDB and SQLite all accept it)."""
    return '"' + name.replace('"', '""') + '"'


def plain(value: Any) -> Any:
    """A value as SQLite's driver would give it, so results compare across engines: decimals as
    int or float, dates and times as ISO text, binary as bytes."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat(sep=" ") if isinstance(value, datetime.datetime) else value.isoformat()
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (list, dict, tuple)):
        return str(value)
    return value


def fetch_bounded(batches, max_rows: int, max_result_bytes: int, digest: bool) -> ExecutionResult:
    """Rows from an iterator of row batches, cut at ``max_rows`` rows or ``max_result_bytes``
    bytes (then ``truncated``); with ``digest`` the whole result is read and hashed, as the SQLite
    sandbox does, so that two cut results still compare in full."""
    rows: list[tuple] = []
    size, n, cut = 0, 0, False
    hasher = _ResultHasher() if digest else None
    for batch in batches:
        for raw in batch:
            row = tuple(plain(v) for v in raw)
            n += 1
            if hasher is not None:
                hasher.add(row)
            if not cut:
                size += _row_bytes(row)
                if len(rows) >= max_rows or size > max_result_bytes:
                    cut = True
                else:
                    rows.append(row)
            if cut and hasher is None:
                return ExecutionResult(True, rows, truncated=True)
    res = ExecutionResult(True, rows, truncated=cut, n_rows=n)
    if hasher is not None:
        res.digest, res.ordered_digest = hasher.digests()
    return res


# ---------------------------------------------------------------------------- URL -> connector

_OPEN: dict[tuple[int, str], Database] = {}
_OPEN_LOCK = threading.Lock()


def open_database(target: Any, registry: Any = None) -> Database:
    """The connector for a URL or a SQLite file path (one per URL, kept open for reuse).

    An unknown scheme is an error that lists the registered ones."""
    url = str(target) if is_url(str(target)) else "sqlite:///" + str(target)
    key = (os.getpid(), url)  # a forked worker opens its own connections, never its parent's
    with _OPEN_LOCK:
        if key in _OPEN and registry is None:
            return _OPEN[key]
    scheme = url_scheme(url)
    if registry is None:
        from vantage_core.plugins import registry as default_registry

        registry = default_registry()
    names = registry.names("database")
    if scheme not in names:
        raise DataError(f"{describe(url)}: unknown database scheme {scheme!r}; registered: {', '.join(names)} "
                        f"(or give a SQLite file path)")
    try:
        db = registry.build("database", scheme, url)
    except VantageError:
        raise
    except ImportError as exc:
        raise DataError(f"{describe(url)}: the {scheme} connector needs a package that is missing: {exc}") from None
    if registry is not None:
        return db  # built from a caller's own registry (tests): not shared
    with _OPEN_LOCK:
        return _OPEN.setdefault(key, db)


def close_all() -> None:
    """Close every connector :func:`open_database` opened (tests, and the end of a server)."""
    with _OPEN_LOCK:
        dbs = list(_OPEN.values())
        _OPEN.clear()
    for db in dbs:
        db.close()


def database_id(given: str) -> tuple[str, str]:
    """``(name, url)`` for ``vantage serve --db``: ``NAME=URL``, or a URL (or SQLite path) named by
    its database (PostgreSQL) or file stem."""
    import urllib.parse
    from pathlib import PurePath

    head, sep, tail = given.partition("=")
    if sep and re.fullmatch(r"[A-Za-z0-9_.\-]+", head) and (is_url(tail) or not is_url(given)):
        return head, tail
    url = given if is_url(given) else "sqlite:///" + given
    if url_scheme(url) == "postgresql":
        parts = urllib.parse.urlsplit(url)
        name = parts.path.lstrip("/") or urllib.parse.parse_qs(parts.query).get("dbname", [""])[0]
        if not name:
            raise DataError(f"--db {describe(given)}: names no database; write postgresql://user@host/DBNAME "
                            f"or NAME=URL")
        return name, url
    return PurePath(file_of_url(url)).stem, url


def url_for(template: str, db_id: str) -> str:
    """``template`` with ``{db_id}`` replaced (``vantage evaluate --execute-on``)."""
    if "{db_id}" not in template:
        raise DataError(f"--execute-on {describe(template)!r}: put {{db_id}} where each example's database id goes, "
                        f"e.g. postgresql://user@host/{{db_id}} or duckdb:///dbs/{{db_id}}.duckdb")
    return template.replace("{db_id}", db_id)
