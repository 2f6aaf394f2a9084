"""Copy a SQLite database (a Spider one, say) into another engine with its keys
(``vantage data load-into URL --from FILE.sqlite``), so the same questions can be scored there.

Column types come from the values SQLite holds (its types are per value, not per column): a
column of integers only becomes ``BIGINT``, of numbers ``DOUBLE``, of blobs ``BLOB``/``BYTEA``,
anything else text; an empty column takes its declared type's affinity. Primary and foreign keys
are added where the data satisfies them (Spider's data breaks a few); the ones that could not
be added are reported, never silently dropped. A connector's factory offers loading by carrying
a ``load_from_sqlite(url, sqlite_path, replace=False, reader=None) -> LoadSummary`` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vantage_core.sql.schema import Schema
from vantage_core.sql.names import quoted
from vantage_core.errors import DataError

INTEGER, REAL, TEXT, BLOB = "integer", "real", "text", "blob"


@dataclass
class SourceTable:
    """One SQLite table read for loading: names, column kinds and rows (values converted to the kinds)."""

    name: str
    columns: list[str]
    kinds: list[str]
    rows: list[tuple]
    primary_keys: list[str] = field(default_factory=list)


@dataclass
class LoadSummary:
    """What a load did: tables and rows copied, and the keys the data did not allow."""

    url: str
    tables: int = 0
    rows: int = 0
    keys_added: int = 0
    keys_skipped: list[str] = field(default_factory=list)  # "table: PRIMARY KEY (a): why"

    def line(self) -> str:
        skipped = f"; keys not added ({len(self.keys_skipped)}): " + "; ".join(self.keys_skipped) \
            if self.keys_skipped else ""
        return f"{self.tables} tables, {self.rows} rows, {self.keys_added} keys{skipped}"


def affinity(declared: str) -> str:
    """SQLite's type affinity of a declared type (its documented rules, in order)."""
    t = (declared or "").upper()
    if "INT" in t:
        return INTEGER
    if any(k in t for k in ("CHAR", "CLOB", "TEXT")):
        return TEXT
    if "BLOB" in t or not t:
        return BLOB
    return REAL


def column_kind(values: list, declared: str) -> str:
    """The one type a column's values fit (see the module docstring)."""
    present = [v for v in values if v is not None]
    if not present:
        return affinity(declared) if affinity(declared) != BLOB else TEXT
    if all(isinstance(v, bytes) for v in present):
        return BLOB
    if all(isinstance(v, int) for v in present):
        return INTEGER
    if all(isinstance(v, (int, float)) for v in present):
        return REAL
    return TEXT


def convert(value, kind: str):
    """A SQLite value as the column's kind holds it (text as SQLite's CAST writes it)."""
    if value is None:
        return None
    if kind == REAL:
        return float(value)
    if kind == TEXT and not isinstance(value, str):
        return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return value


def read_sqlite(path: str | Path) -> tuple[Schema, list[SourceTable]]:
    """The schema and every table's rows of a SQLite file (opened read-only)."""
    from vantage_core.sql.sqlite_file import connect_readonly, schema_from_sqlite

    schema = schema_from_sqlite(path)
    conn = connect_readonly(path)
    out = []
    try:
        for t in schema.tables:
            q = quoted(t.name)
            info = conn.execute(f"PRAGMA table_info({q})").fetchall()
            rows = conn.execute(f"SELECT * FROM {q}").fetchall()
            kinds = [column_kind([r[i] for r in rows], info[i][2]) for i in range(len(info))]
            conv = [tuple(convert(v, k) for v, k in zip(r, kinds)) for r in rows]
            out.append(SourceTable(t.name, [c[1] for c in info], kinds, conv, list(t.primary_keys)))
    finally:
        conn.close()
    return schema, out


def creation_order(schema: Schema) -> list[str]:
    """Table names with every referenced table before the tables that reference it (cycles broken
    in schema order), so that foreign keys can be declared as tables are created."""
    refs = {t.name.lower(): {fk.ref_table.lower() for fk in schema.foreign_keys
                             if fk.table.lower() == t.name.lower() and fk.ref_table.lower() != t.name.lower()}
            for t in schema.tables}
    names = {t.name.lower(): t.name for t in schema.tables}
    order: list[str] = []
    visiting: set[str] = set()

    def visit(n: str) -> None:
        if n in order or n in visiting or n not in names:
            return
        visiting.add(n)
        for r in sorted(refs.get(n, ())):
            visit(r)
        visiting.discard(n)
        order.append(n)

    for t in schema.tables:
        visit(t.name.lower())
    return [names[n] for n in order]


def load_into(url: str, sqlite_path: str | Path, replace: bool = False, reader: str | None = None,
              registry=None) -> LoadSummary:
    """Copy the SQLite database at ``sqlite_path`` into the database at ``url`` (created where the
    engine allows). ``replace``: drop tables of the same names first (else they must not exist).
    ``reader``: a role to grant SELECT on the copied tables (PostgreSQL)."""
    from vantage_core.sql.database import describe, url_scheme

    if not Path(sqlite_path).is_file():
        raise DataError(f"--from {sqlite_path}: no such SQLite file")
    scheme = url_scheme(url)
    if registry is None:
        from vantage_core.plugins import registry as default_registry

        registry = default_registry()
    names = registry.names("database")
    if scheme not in names:
        raise DataError(f"{describe(url)}: unknown database scheme {scheme!r}; registered: {', '.join(names)}")
    loader = getattr(registry.get("database", scheme).factory, "load_from_sqlite", None)
    if loader is None:
        able = [n for n in names if getattr(registry.get("database", n).factory, "load_from_sqlite", None)]
        raise DataError(f"the {scheme} connector cannot load data; these can: {', '.join(able)}")
    return loader(url, sqlite_path, replace=replace, reader=reader)
