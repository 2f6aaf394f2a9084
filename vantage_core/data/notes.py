"""Schema notes: what a database's owner knows about its names, in a YAML file beside it.

    tables:
      Orders:
        description: one row per customer order
        synonyms: [purchases, sales]
        columns:
          ShipCountry: {description: country the order was shipped to, synonyms: [destination]}
          Discontinued: {values: {"1": discontinued, "0": available}}
          InternalCode: {hide: true}

A table takes ``description`` (text), ``synonyms`` (a list of texts), ``hide`` (true: the model
never sees it) and ``columns``; a column takes ``description``, ``synonyms``, ``values`` (a
stored value -> what it means) and ``hide``. Names are the database's own, matched case-blind
(as SQLite resolves them). The file beside a database is found by name (:func:`notes_beside`):
``shop.sqlite`` -> ``shop.notes.yaml``. :func:`apply_notes` gives the schema the model sees: hidden
tables and columns gone, the rest carrying the notes; a description from the file replaces the
one an SQL comment gave (the connectors read those).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from vantage_core.config import Located, read_yaml_lines
from vantage_core.data.example import Example
from vantage_core.errors import ConfigError
from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.textfiles import read_utf8

NOTES_SUFFIX = ".notes.yaml"
TEXT, TEXTS, FLAG = "text", "a list of texts, e.g. [purchases, sales]", "true or false"
TABLE_FIELDS = {"description": TEXT, "synonyms": TEXTS, "hide": FLAG,
                "columns": "a mapping of column name to its notes"}
COLUMN_FIELDS = {"description": TEXT, "synonyms": TEXTS, "hide": FLAG,
                 "values": 'a mapping of stored value to what it means, e.g. {"1": discontinued}'}


@dataclass(frozen=True)
class ColumnNotes:
    description: str | None = None
    synonyms: tuple[str, ...] = ()
    values: dict[str, str] = field(default_factory=dict)  # stored value -> meaning
    hide: bool = False


@dataclass(frozen=True)
class TableNotes:
    description: str | None = None
    synonyms: tuple[str, ...] = ()
    hide: bool = False
    columns: dict[str, ColumnNotes] = field(default_factory=dict)  # the database's column name -> notes


@dataclass(frozen=True)
class SchemaNotes:
    """A notes file, checked against one schema: the database's table name -> its notes."""

    source: str
    tables: dict[str, TableNotes] = field(default_factory=dict)


# ---------------------------------------------------------------------------- where notes are

def database_file(db: str | Path) -> Path | None:
    """The file a database lives in: a SQLite path, or the file of a ``sqlite:///`` or
    ``duckdb:///`` URL; None for a server's URL."""
    from vantage_core.sql.database import database_url, file_of_url, url_scheme

    url = database_url(db)
    return Path(file_of_url(url)) if url_scheme(url) in ("sqlite", "duckdb") else None


def notes_beside(db: str | Path) -> Path | None:
    """The notes file beside a database file, if there is one: its name with the last extension
    replaced by ``.notes.yaml`` (``shop.sqlite`` -> ``shop.notes.yaml``, ``sales.duckdb`` ->
    ``sales.notes.yaml``), in the same folder."""
    file = database_file(db)
    if file is None:
        return None
    notes = file.with_name(file.stem + NOTES_SUFFIX)
    return notes if notes.is_file() else None


# ---------------------------------------------------------------------------- reading and checking

def read_notes(path: str | Path, schema: Schema) -> SchemaNotes:
    """The notes in ``path``, checked against ``schema``; a mistake is one :class:`ConfigError`
    naming the file, line and field and what is valid (an unknown key, a wrong type, a table or
    column the database does not have, bytes that are not UTF-8, malformed YAML)."""
    try:
        text = read_utf8(path, ConfigError)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the notes file: {exc.strerror or exc}") from None
    data, lines = read_yaml_lines(text, str(path))
    located = Located(data if isinstance(data, dict) else {}, lines, str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the notes must be a mapping with the key 'tables', not a "
                          f"{type(data).__name__}")
    extra = sorted(set(map(str, data)) - {"tables"})
    if extra:
        raise located.error((extra[0],), "unknown field; valid fields: tables")
    tables = _mapping(located, ("tables",), data.get("tables") or {}, "a mapping of table name to its notes")
    out: dict[str, TableNotes] = {}
    for key, entry in tables.items():
        table = _named(located, ("tables", key), schema.tables, f"table in {schema.db_id}", "tables")
        if table.name in out:
            raise located.error(("tables", key), f"{table.name!r} is given twice (names are matched case-blind)")
        out[table.name] = _table_notes(located, ("tables", key), entry, table)
    return SchemaNotes(str(path), out)


def _table_notes(located: Located, path: tuple, entry: Any, table: Table) -> TableNotes:
    entry = _fields(located, path, entry, TABLE_FIELDS)
    columns: dict[str, ColumnNotes] = {}
    given = _mapping(located, path + ("columns",), entry.get("columns") or {}, TABLE_FIELDS["columns"])
    for key, notes in given.items():
        column = _named(located, path + ("columns", key), table.columns, f"column in {table.name}", "columns")
        if column.name in columns:
            raise located.error(path + ("columns", key), f"{column.name!r} is given twice (names are matched case-blind)")
        columns[column.name] = _column_notes(located, path + ("columns", key), notes)
    return TableNotes(_text(located, path, entry, "description"), _texts(located, path, entry),
                      _flag(located, path, entry), columns)


def _column_notes(located: Located, path: tuple, entry: Any) -> ColumnNotes:
    entry = _fields(located, path, entry, COLUMN_FIELDS)
    meanings = _mapping(located, path + ("values",), entry.get("values") or {}, COLUMN_FIELDS["values"])
    values = {}
    for stored, meaning in meanings.items():
        if isinstance(stored, bool) or not isinstance(meaning, str) or not meaning.strip():
            raise located.error(path + ("values", stored), f"give {COLUMN_FIELDS['values']}")
        values[str(stored)] = meaning.strip()
    return ColumnNotes(_text(located, path, entry, "description"), _texts(located, path, entry), values,
                       _flag(located, path, entry))


def _fields(located: Located, path: tuple, entry: Any, valid: dict[str, str]) -> dict:
    """``entry`` as a mapping of known fields (empty for ``null``)."""
    entry = _mapping(located, path, {} if entry is None else entry,
                     "a mapping with any of " + ", ".join(valid))
    for key in entry:
        if key not in valid:
            raise located.error(path + (key,), f"unknown field; valid fields: {', '.join(valid)}")
    return entry


def _mapping(located: Located, path: tuple, value: Any, shape: str) -> dict:
    if not isinstance(value, dict):
        raise located.error(path, f"expected {shape}, got {_kind(value)}")
    return value


def _named(located: Located, path: tuple, parts: list, what: str, plural: str) -> Any:
    """The table or column of ``parts`` named ``path[-1]`` (exactly, else case-blind)."""
    name = str(path[-1])
    found = next((p for p in parts if p.name == name), None) or \
        next((p for p in parts if p.name.lower() == name.lower()), None)
    if found is None:
        have = ", ".join(p.name for p in parts) or "(none)"
        raise located.error(path, f"no such {what}; {plural}: {have}")
    return found


def _text(located: Located, path: tuple, entry: dict, key: str) -> str | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise located.error(path + (key,), f"expected {TEXT}, got {_kind(value)}")
    return " ".join(value.split())


def _texts(located: Located, path: tuple, entry: dict) -> tuple[str, ...]:
    value = entry.get("synonyms") or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise located.error(path + ("synonyms",), f"expected {TEXTS}, got {_kind(value)}")
    return tuple(" ".join(v.split()) for v in value)


def _flag(located: Located, path: tuple, entry: dict) -> bool:
    value = entry.get("hide", False)
    if not isinstance(value, bool):
        raise located.error(path + ("hide",), f"expected {FLAG}, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return f"{type(value).__name__} {value!r}" if not isinstance(value, str) else f"text {value[:40]!r}"


# ---------------------------------------------------------------------------- the schema the model sees

def apply_notes(schema: Schema, notes: SchemaNotes) -> Schema:
    """A copy of ``schema`` without the hidden tables and columns (and the keys through them),
    each other table and column carrying its notes."""
    tables = []
    for table in schema.tables:
        tn = notes.tables.get(table.name, TableNotes())
        if tn.hide:
            continue
        columns = [_noted_column(c, tn.columns.get(c.name)) for c in table.columns
                   if not tn.columns.get(c.name, ColumnNotes()).hide]
        kept = {c.name for c in columns}
        tables.append(dataclasses.replace(
            table, columns=columns, primary_keys=[k for k in table.primary_keys if k in kept],
            description=tn.description or table.description, synonyms=list(tn.synonyms) or list(table.synonyms)))
    present = {(t.name.lower(), c.name.lower()) for t in tables for c in t.columns}
    fks = [fk for fk in schema.foreign_keys if (fk.table.lower(), fk.column.lower()) in present
           and (fk.ref_table.lower(), fk.ref_column.lower()) in present]
    return Schema(schema.db_id, tables, fks)


def _noted_column(column: Column, notes: ColumnNotes | None) -> Column:
    if notes is None:
        return dataclasses.replace(column)
    return dataclasses.replace(column, description=notes.description or column.description,
                               synonyms=list(notes.synonyms) or list(column.synonyms),
                               values=dict(notes.values) or dict(column.values))


def schema_with_notes(schema: Schema, db: str | Path | None = None, notes_file: str | Path | None = None) -> Schema:
    """``schema`` with the notes of ``notes_file``, else of the file beside the database ``db``;
    ``schema`` itself when there are none."""
    path = notes_file or (notes_beside(db) if db is not None else None)
    return schema if path is None else apply_notes(schema, read_notes(path, schema))


def value_meanings(schema: Schema) -> dict[str, str]:
    """Each meaning the notes give a stored value, lower-cased -> the value as stored (so a
    question's "discontinued", copied into the SQL, is written as the stored ``1``)."""
    return {meaning.lower(): stored for t in schema.tables for c in t.columns for stored, meaning in c.values.items()}


# ---------------------------------------------------------------------------- a dataset's examples

def notes_for_database(db_id: str, db_path: str | None, template: str | None) -> Path | None:
    """The notes file of one database: ``template`` with ``{db_id}`` filled (when that file
    exists), else the file beside the database."""
    if template is not None:
        given = Path(template.replace("{db_id}", db_id))
        if given.is_file():
            return given
    return notes_beside(db_path) if db_path else None


def examples_with_notes(examples: Iterable[Example], template: str | None = None,
                        beside: bool = True) -> tuple[list[Example], dict[str, Path]]:
    """The examples with each database's notes applied to its schema (read and checked once per
    database), and which file each database's notes came from. ``template``: a path with
    ``{db_id}`` (``notes/{db_id}.notes.yaml``); ``beside``: also the file beside each database."""
    examples = list(examples)
    if template is not None:
        _check_template(template, {ex.db_id for ex in examples})
    schemas: dict[tuple, Schema] = {}
    used: dict[str, Path] = {}
    out = []
    for ex in examples:
        db_path = ex.db_paths[0] if ex.db_paths and beside else None
        key = (ex.db_id, db_path, id(ex.schema))
        if key not in schemas:
            path = notes_for_database(ex.db_id, db_path, template)
            schemas[key] = ex.schema if path is None else apply_notes(ex.schema, read_notes(path, ex.schema))
            if path is not None:
                used[ex.db_id] = path
        out.append(ex if schemas[key] is ex.schema else dataclasses.replace(ex, schema=schemas[key]))
    return out, used


def _check_template(template: str, db_ids: set[str]) -> None:
    if "{db_id}" not in template and len(db_ids) > 1:
        raise ConfigError(f"--notes {template}: the examples are over {len(db_ids)} databases; write {{db_id}} "
                          f"where each database's name goes (notes/{{db_id}}.notes.yaml)")
    if not any(Path(template.replace("{db_id}", d)).is_file() for d in db_ids):
        shown = template.replace("{db_id}", sorted(db_ids)[0]) if db_ids else template
        raise ConfigError(f"--notes {template}: no such notes file for any database (e.g. {shown})")
