"""Databases by URL: the contract a ``database`` plugin implements, and how a URL finds one.

The model writes SQLite SQL (it was trained on it). A :class:`Database` connector reads a
database's schema and cell values, and runs that SQL on its own engine: it transpiles it with
sqlglot to the engine's dialect, checks it there (``EXPLAIN``) and executes it read-only, bounded
in time, rows, bytes and memory. Built-ins, registered by ``plugins/vantage_plugins/databases/``:
``sqlite`` (:mod:`vantage_core.sql.sqlite`, over the sandbox of :mod:`vantage_core.sql.sandbox`),
``duckdb`` and ``postgresql``; a plugin adds another engine with ``register_databases``
(``vantage_core/hookspecs.py``). Callers name a database by path or URL and go through
:func:`open_database`; nothing else tells the two apart (:func:`database_url`).

A database is named by a URL whose scheme is the connector's registered name:
``sqlite:///relative.sqlite``, ``sqlite:////absolute/path.sqlite`` (SQLAlchemy's convention: the
path follows the third slash), ``duckdb:///file.duckdb``, ``postgresql://user@host:5432/db``
(``postgres://`` and ``postgresql+psycopg://`` mean the same). A bare file path still means SQLite.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from vantage_core.errors import DataError, VantageError
from vantage_core.sql.result import DEFAULT_RESULT_BYTES, ExecutionResult
from vantage_core.sql.schema import Schema
from vantage_core.sql.values import distinct_query

URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9.\-]*)(\+[A-Za-z0-9_.\-]+)?://")
ALIASES = {"postgres": "postgresql"}
# "1": a connector may run model SQL as a role that can write or administer (--allow-privileged;
# an environment variable, so that evaluation's spawned workers inherit it)
ALLOW_PRIVILEGED_ENV = "VANTAGE_ALLOW_PRIVILEGED"


@dataclass
class DialectResult(ExecutionResult):
    """An :class:`ExecutionResult` that also says what ran: the SQL as given (SQLite's dialect) and
    as transpiled to the engine's."""

    sql: str = ""
    transpiled: str = ""
    dialect: str = "sqlite"


def database_url(target: Any) -> str:
    """The URL ``target`` names: a database URL as given, anything else as the SQLite file path
    of ``sqlite:///path``."""
    text = str(target)
    return text if is_url(text) else "sqlite:///" + quote(text, safe="/")


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
    is relative, ``sqlite:////abs.sqlite`` absolute); the query string is dropped and percent
    escapes are decoded (``my%3Fdb.sqlite`` names ``my?db.sqlite``)."""
    rest = unquote(URL_SCHEME.sub("", url, count=1).split("?", 1)[0])
    if not rest.startswith("/"):
        raise DataError(f"{url!r}: a file database's URL is scheme:///path (three slashes, then the path; "
                        f"four for an absolute path)")
    path = rest[1:]
    if not path:
        raise DataError(f"{url!r}: names no file; write {url_scheme(url)}:///path/to/file")
    return path


def privileged_allowed() -> bool:
    """Whether model SQL may run as a database role that can do more than read (unsafe)."""
    return os.environ.get(ALLOW_PRIVILEGED_ENV, "") == "1"


def allow_privileged(allowed: bool = True) -> None:
    """Let model SQL run as a role that can write or administer, in this process and the workers
    it starts (``--allow-privileged``); unsafe: the SQL allow lists are then the only guard."""
    if allowed:
        os.environ[ALLOW_PRIVILEGED_ENV] = "1"
    else:
        os.environ.pop(ALLOW_PRIVILEGED_ENV, None)


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
        self._schema_signature: tuple = ()
        # one statement at a time per connection (re-entrant: reading values introspects first)
        self._lock = threading.RLock()

    # -- the four duties -------------------------------------------------------------------
    def schema(self) -> Schema:
        """Tables, columns (Spider's coarse types), primary and foreign keys (read once, and
        again when :meth:`signature` changed)."""
        with self._lock:
            signature = self.signature()
            if self._schema is None or signature != self._schema_signature:
                self._schema, self._schema_signature = self._introspect(), signature
            return self._schema

    def signature(self) -> tuple:
        """What changes when the database is written or replaced, for caches of what was read
        from it; ``()`` (the default) when the connector cannot tell: read once."""
        return ()

    def transpile(self, sql: str) -> str:
        """``sql`` (SQLite's dialect) in the engine's dialect; :class:`DataError` when it is not
        exactly one statement that only reads, or :meth:`_check_tree` refuses it (before and
        after it is written in the engine's dialect)."""
        import sqlglot
        from sqlglot.errors import ParseError

        try:
            trees = [t for t in sqlglot.parse(sql, read="sqlite") if t is not None]
        except ParseError as exc:
            raise DataError(f"cannot parse the SQL: {str(exc).splitlines()[0]}") from None
        if len(trees) != 1:
            raise DataError(f"give exactly one statement, got {len(trees)}")
        self._check_tree(trees[0])
        # comments are dropped: the engine runs exactly the statement that was checked
        text = self._adapt(self._sqlite_semantics(trees[0])).sql(dialect=self.dialect, comments=False)
        self._check_written(text)
        return text

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
                with self._lock:
                    vals = self._distinct(table, col, per_column)
                out[(table.lower(), col.lower())] = [v for v in vals if len(v) <= max_chars]
        return out

    def cased_values(self, per_column: int = 2000, max_chars: int = 60) -> dict[str, str]:
        """Every short text value, lower-cased -> as stored (``per_column`` per column)."""
        out: dict[str, str] = {}
        for t in self.schema().tables:
            for c in t.columns:
                with self._lock:
                    vals = self._distinct(t.name, c.name, per_column)
                for v in vals:
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
        for select in list(tree.find_all(exp.Select)):
            self._bare_columns(select)
        self._affinity(tree)
        for select in list(tree.find_all(exp.Select)):
            self._tie_order(select)
        return tree

    @staticmethod
    def _number_beside_word(cmp: Any, is_number_col: Any) -> bool:
        """``price > 'modern'``: SQLite never converts a word to a number; every number sorts
        before every text, so the comparison's outcome is known (NULL stays NULL). The other
        engines try the conversion and fail. Replaced by that outcome; True when it was."""
        from sqlglot import exp

        for col, lit, flipped in ((cmp.this, cmp.expression, False), (cmp.expression, cmp.this, True)):
            if is_number_col(col) and isinstance(lit, exp.Literal) and lit.is_string \
                    and _number_or_none(lit.this) is None:
                kind = type(cmp)
                if flipped:  # 'w' > col is col < 'w'
                    kind = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}.get(kind, kind)
                holds = kind in (exp.NEQ, exp.LT, exp.LTE)  # number < text
                outcome = exp.Not(this=exp.Is(this=col.copy(), expression=exp.Null())) if holds \
                    else exp.And(this=exp.Is(this=col.copy(), expression=exp.Null()), expression=exp.Null())
                cmp.replace(exp.Paren(this=outcome))
                return True
        return False

    @staticmethod
    def _tie_order(select: Any) -> None:
        """SQLite emits groups in the order of their keys and its sorter breaks ties of an ORDER BY
        in that order for ASC and in reverse for DESC; ``GROUP BY k ORDER BY count(*) DESC LIMIT 1``
        is tied often in Spider. The group keys, in the first ORDER BY term's direction, are added as
        the last ORDER BY terms, so the engine keeps the group SQLite keeps."""
        from sqlglot import exp

        group, order = select.args.get("group"), select.args.get("order")
        if group is None or order is None or select.args.get("limit") is None or not order.expressions:
            return
        desc = bool(order.expressions[0].args.get("desc"))
        present = {o.this.sql().lower() for o in order.expressions}
        for key in group.expressions:
            if key.sql().lower() not in present and not isinstance(key, exp.Literal):
                order.append("expressions", exp.Ordered(this=key.copy(), desc=desc, nulls_first=not desc))

    def _column_type(self, col: Any) -> str | None:
        """The coarse type of a column reference, resolved through its query's tables and aliases
        (None when it cannot be told: an alias, an expression, a name in several tables)."""
        from sqlglot import exp

        select = col.find_ancestor(exp.Select)
        if select is None:
            return None
        tables = {}
        for t in select.find_all(exp.Table):
            if t.find_ancestor(exp.Select) is select:
                tables[(t.alias or t.name).lower()] = t.name.lower()
        candidates = [tables.get(col.table.lower())] if col.table else list(tables.values())
        found = set()
        for name in candidates:
            table = self.schema().table(name) if name else None
            for c in table.columns if table else []:
                if c.name.lower() == col.name.lower():
                    found.add(c.type)
        return found.pop() if len(found) == 1 else None

    def _affinity(self, tree: Any) -> None:
        """SQLite compares a text column with a number as text (``yn = 1`` matches '1'), and a
        text column with a number column as numbers; the other engines refuse to compare text with
        numbers. A number literal beside a text column becomes a string literal; a number column
        beside a text column is cast to text (exact for the integers Spider keeps in text columns)."""
        from sqlglot import exp

        def is_text(node: Any) -> bool:
            return isinstance(node, exp.Column) and self._column_type(node) == "text"

        def is_number_col(node: Any) -> bool:
            return isinstance(node, exp.Column) and self._column_type(node) == "number"

        for cmp in list(tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)):
            if self._number_beside_word(cmp, is_number_col):
                continue
            for text_side, other in ((cmp.this, cmp.expression), (cmp.expression, cmp.this)):
                if not is_text(text_side):
                    continue
                if isinstance(other, exp.Literal) and not other.is_string:
                    other.replace(exp.Literal.string(other.this))
                elif is_number_col(other):
                    other.replace(exp.Cast(this=other.copy(), to=exp.DataType.build("text")))
                break
        for isin in list(tree.find_all(exp.In)):
            if is_text(isin.this):
                for lit in isin.expressions:
                    if isinstance(lit, exp.Literal) and not lit.is_string:
                        lit.replace(exp.Literal.string(lit.this))
        for lit in list(tree.find_all(exp.Literal)):  # WHERE 'Sony': a string as a truth value
            parent = lit.parent
            boolean = isinstance(parent, (exp.And, exp.Or, exp.Not)) or \
                (isinstance(parent, (exp.Where, exp.Having)) and parent.this is lit)
            if boolean and lit.is_string:
                lit.replace(exp.Boolean(this=_number_or_none(lit.this) not in (None, 0.0)))
        for agg in list(tree.find_all(exp.Sum, exp.Avg)):  # SQLite sums text as the numbers it spells
            if is_text(agg.this):
                agg.this.replace(exp.Cast(this=agg.this.copy(), to=exp.DataType.build("double")))

    def _bare_columns(self, select: Any) -> None:
        """SQLite lets a query name a column beside an aggregate without grouping by it (a "bare"
        column: the value of the row holding the min or max when there is one such aggregate, else
        of any row of the group); the other engines refuse it. Each bare column is wrapped in
        :meth:`_bare_value`."""
        from sqlglot import exp

        def own(node: Any) -> bool:  # belongs to this SELECT, not to a subquery inside it
            return node.find_ancestor(exp.Select) is select

        aggs = [a for e in select.expressions for a in e.find_all(exp.AggFunc) if own(a)]
        having = select.args.get("having")
        if having is not None:
            aggs += [a for a in having.find_all(exp.AggFunc) if own(a)]
        group = select.args.get("group")
        if not aggs and group is None:
            return
        grouped = {g.sql().lower() for g in (group.expressions if group else [])}
        grouped |= {g.name.lower() for g in (group.expressions if group else []) if isinstance(g, exp.Column)}
        extremes = [a for a in aggs if isinstance(a, (exp.Max, exp.Min))]
        extreme = extremes[0] if len(extremes) == 1 and len(aggs) == 1 else None
        aliases = {e.alias.lower() for e in select.expressions if isinstance(e, exp.Alias)}
        places = list(select.expressions) + ([having] if having is not None else [])
        order = select.args.get("order")
        if order is not None:
            places += list(order.expressions)
        for place in places:
            for col in list(place.find_all(exp.Column)):
                if not own(col) or col.find_ancestor(exp.AggFunc) is not None and own(col.find_ancestor(exp.AggFunc)):
                    continue
                if col.sql().lower() in grouped or (not col.table and col.name.lower() in aliases):
                    continue
                if not col.table and col.name.lower() in grouped:
                    continue
                col.replace(self._bare_value(col.copy(), extreme))

    def _bare_value(self, column: Any, extreme: Any) -> Any:
        """The engine's expression for a bare column (see :meth:`_bare_columns`): ``extreme`` is the
        query's one MIN or MAX aggregate, or None. Default: ``MIN(column)``; engines with a better
        spelling of SQLite's choice override it."""
        from sqlglot import exp

        return exp.Min(this=column)

    def _check_tree(self, tree: Any) -> None:
        """Refuse a statement the engine would run but must not; raises :class:`DataError`.
        Default: anything but one query that reads (a subclass checks more)."""
        from vantage_core.sql.policy import TOP, engine_name

        if type(tree).__name__ not in TOP:
            raise DataError(f"only queries that read are run on {engine_name(self.dialect)} (SELECT, UNION, ...); "
                            f"this is {type(tree).__name__.upper()}")

    def _check_written(self, sql: str) -> None:
        """Refuse the statement as written in the engine's dialect (the text that runs); default:
        nothing more to check."""

    def _adapt(self, tree: Any) -> Any:
        """The parsed SQLite statement adjusted for the engine before it is written out."""
        return tree


class QueriedDatabase(Database):
    """A connector that runs its own queries (DuckDB, PostgreSQL): introspection records the
    text columns in ``_text``, cell values come from a bounded ``SELECT DISTINCT`` through
    ``_run``, and a statement runs only when :mod:`vantage_core.sql.policy`'s allow lists pass
    it, both as parsed and as written in the engine's dialect, reading this database's tables."""

    def __init__(self, url: str):
        super().__init__(url)
        self._text: set[tuple[str, str]] = set()  # (table, column) lower-cased, filled by _introspect

    def _distinct(self, table: str, column: str, limit: int) -> list[str]:
        self.schema()
        if (table.lower(), column.lower()) not in self._text:
            return []
        res = self._run(distinct_query(table, column, limit), 10.0, limit, 1 << 26, False)
        return [r[0] for r in res.rows if isinstance(r[0], str)] if res.ok else []

    def _readable_tables(self) -> list[str]:
        """The tables a query may read: this database's own."""
        return [t.name for t in self.schema().tables]

    def _check_tree(self, tree: Any) -> None:
        from vantage_core.sql.policy import check_query

        check_query(tree, self.dialect, self._readable_tables())

    def _check_written(self, sql: str) -> None:
        from vantage_core.sql.policy import check_sql

        check_sql(sql, self.dialect, self._readable_tables())


def _number_or_none(text: str) -> float | None:
    """The number a string spells, as SQLite reads one (None for a word or an empty string)."""
    try:
        return float(text.strip())
    except ValueError:
        return None


# ---------------------------------------------------------------------------- URL -> connector

_OPEN: dict[tuple[int, str], Database] = {}
_OPEN_LOCK = threading.Lock()


def open_database(target: Any, registry: Any = None) -> Database:
    """The connector for a URL or a SQLite file path (one per URL, kept open for reuse).

    An unknown scheme is an error that lists the registered ones."""
    url = database_url(target)
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
    url = database_url(given)
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
