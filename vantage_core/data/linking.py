"""Schema items and linking features: the types a ``schema_linker`` plugin works with.

A database's schema as a flat list of items (its tables, then every table's columns), each with
the normalized words of its natural name; :class:`Links` holds a linker's answer (which items
the question names, by name or by a stored cell value, and which question words do the naming);
:func:`column_values` and :func:`cased_values` read a database's text values once (cached).
:func:`pair_links` pairs the linker's words with the items they name (for relation-aware encoders).
The built-in linker is ``lexical`` (``plugins/vantage_plugins/linkers/lexical.py``);
``vantage_core/hookspecs.py`` (``register_schema_linkers``) states the contract.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from vantage_core.sql.database import open_database

NAME_NONE, NAME_PARTIAL, NAME_EXACT = 0, 1, 2  # name-match features; value features are 0 or 1


def normalize(text: str) -> str:
    """Lower-case alphanumeric words separated by single spaces ("O'Brien" -> "o brien")."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", text.lower()).split())


def stem(word: str) -> str:
    """A crude singular: enough to match "singers" with "singer" and "countries" with "country"."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@dataclass
class SchemaItem:
    """A table (``column is None``) or one of its columns."""

    table: str  # as in the database
    column: str | None
    words: tuple[str, ...]  # normalized, stemmed words of the natural name
    table_index: int  # index of the owning table among the items' tables
    col_type: str = "table"  # text | number | time | boolean | others | table
    primary: bool = False
    foreign: bool = False
    text: str = ""  # the natural name, for the sentence encoder
    synonyms: tuple[tuple[str, ...], ...] = ()  # other names (schema notes), as normalized, stemmed words
    description: str = ""  # what the item holds (schema notes, SQL comments), for the sentence encoder


def name_words(name: str) -> tuple[str, ...]:
    """The normalized, stemmed words a name is matched by."""
    return tuple(stem(w) for w in normalize(name).split())


def schema_items(schema) -> list[SchemaItem]:
    """A :class:`~vantage_core.sql.schema.Schema` -> its tables, then every table's columns
    (each with the synonyms and description its notes give)."""
    fk_cols = {(fk.table.lower(), fk.column.lower()) for fk in schema.foreign_keys}
    fk_cols |= {(fk.ref_table.lower(), fk.ref_column.lower()) for fk in schema.foreign_keys}
    items = []
    for ti, t in enumerate(schema.tables):
        natural = t.natural_name or t.name.replace("_", " ")
        items.append(SchemaItem(t.name, None, name_words(natural), ti, text=natural.lower(),
                                **_noted(t)))
    for ti, t in enumerate(schema.tables):
        pks = {p.lower() for p in t.primary_keys}
        for c in t.columns:
            natural = c.natural_name or c.name.replace("_", " ")
            items.append(SchemaItem(t.name, c.name, name_words(natural), ti,
                                    col_type=c.type, primary=c.name.lower() in pks,
                                    foreign=(t.name.lower(), c.name.lower()) in fk_cols, text=natural.lower(),
                                    **_noted(c)))
    return items


def _noted(part) -> dict:
    """The item fields a table's or column's notes give (none when it has no notes)."""
    synonyms = tuple(w for w in map(name_words, getattr(part, "synonyms", None) or ()) if w)
    description = getattr(part, "description", None) or ""
    return {"synonyms": synonyms, "description": description}


def column_values(db_path: str | Path, schema, per_column: int = 5000, max_chars: int = 40) -> dict[tuple[str, str], set[str]]:
    """Normalized distinct text values of every text column: (table, column) lower -> values.

    ``db_path``: a SQLite file or a database URL, read through its connector (capped per column).
    Cached; a SQLite file written or replaced since is read again."""
    tables = tuple((t.name, tuple(c.name for c in t.columns if c.type == "text")) for t in schema.tables)
    db = open_database(db_path)
    return with_meanings(_column_values(db.url, db.signature(), tables, per_column, max_chars), schema)


def with_meanings(values: dict[tuple[str, str], set[str]], schema) -> dict[tuple[str, str], set[str]]:
    """``values`` with the meanings schema notes give a column's stored values added to that
    column's (normalized), so a question's "discontinued" links to the column that stores it as
    ``1``; ``values`` itself (the cached object) when the schema has no meanings."""
    meanings = {(t.name.lower(), c.name.lower()): {normalize(m) for m in c.values.values()} - {""}
                for t in schema.tables for c in t.columns if getattr(c, "values", None)}
    if not any(meanings.values()):
        return values
    out = dict(values)
    for key, words in meanings.items():
        out[key] = out.get(key, set()) | words
    return out


@lru_cache(maxsize=256)
def _column_values(url: str, signature: tuple, tables: tuple, per_column: int, max_chars: int) -> dict:
    """``signature``: the database's (:meth:`~vantage_core.sql.database.Database.signature`), so a
    database written or replaced is read again."""
    raw = open_database(url).column_values(tables, per_column, max_chars)
    return {key: {v for v in map(normalize, vals) if v} for key, vals in raw.items()}


def cased_values(db_path: str, per_column: int = 2000, max_chars: int = 60) -> dict[str, str]:
    """Every short text cell value of a database, lower-cased -> as stored (for writing a
    value copied from the question the way the database spells it). ``db_path``: a SQLite file
    or a database URL (read through its connector). Cached; a SQLite file written or replaced
    since is read again."""
    db = open_database(db_path)
    return _cased_values(db.url, db.signature(), per_column, max_chars)


@lru_cache(maxsize=64)
def _cased_values(url: str, signature: tuple, per_column: int, max_chars: int) -> dict[str, str]:
    return open_database(url).cased_values(per_column, max_chars)


@dataclass
class Links:
    """Linking features of one question against one schema."""

    item_name: list[int]  # per item: NAME_NONE / NAME_PARTIAL / NAME_EXACT
    item_value: list[int]  # per item: 1 when a question n-gram is one of the column's values
    word_table: list[int] = field(default_factory=list)  # per question word: best table-name match
    word_column: list[int] = field(default_factory=list)  # per question word: best column-name match
    word_value: list[int] = field(default_factory=list)  # per question word: part of a value match


PAIR_VALUE = 3  # pair_links kind of a cell-value match; name matches use NAME_PARTIAL / NAME_EXACT


def pair_links(question_words: list[str], items: list[SchemaItem], links: Links,
               values: dict[tuple[str, str], set[str]] | None = None, max_ngram: int = 4) -> list[list[int]]:
    """Which question word names which item: ``[word, item, kind]`` triples (kind NAME_PARTIAL,
    NAME_EXACT or PAIR_VALUE), within the linker's answer ``links`` (a pair is only kept where the
    linker matched both the word and the item), for relation-aware encoders.

    A name pair: one of the word's (stemmed) words is one of the item's name words. A value pair:
    a run of the linker's value words (up to ``max_ngram``) is one of the column's cell values.
    """
    stems = [{stem(w) for w in normalize(q).split()} for q in question_words]
    out: dict[tuple[int, int], int] = {}
    for k, item in enumerate(items):
        if not links.item_name[k]:
            continue
        tags = links.word_table if item.column is None else links.word_column
        names = set(item.words).union(*item.synonyms)
        for w, ws in enumerate(stems):
            if w < len(tags) and tags[w] and ws & names:
                out[(w, k)] = links.item_name[k]
    if values and links.word_value:
        raw = [normalize(q) for q in question_words]
        spans = [(s, e) for n in range(1, max_ngram + 1) for s in range(len(raw) - n + 1)
                 for e in [s + n] if all(links.word_value[s:e]) and any(raw[s:e])]
        for k, item in enumerate(items):
            vals = values.get((item.table.lower(), (item.column or "").lower())) if links.item_value[k] else None
            for s, e in spans if vals else ():
                if " ".join(w for w in raw[s:e] if w) in vals:
                    for w in range(s, e):
                        if out.get((w, k), 0) != NAME_EXACT:
                            out[(w, k)] = PAIR_VALUE
    return [[w, k, kind] for (w, k), kind in sorted(out.items())]
