"""Schema linking: which question words name which tables, columns and cell values.

The features are the ones the pre-BERT Spider systems (IRNet, RAT-SQL) found to carry most of
the generalisation to unseen databases: an exact or partial match between question n-grams and
a table or column name, and a match between a question n-gram and a value stored in a column.
They are small integers, turned into learned embeddings added to the schema item and question
token states (:class:`LinkEmbedding`), so a model can find "the column the question talks
about" on a schema it never saw.

``schema_items(schema)`` lists a database's tables then columns; ``link(words, items, values)``
computes the features; ``column_values(db_path, schema)`` reads the cell values once per database.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

NAME_NONE, NAME_PARTIAL, NAME_EXACT = 0, 1, 2
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or is are was were be been what which who whom whose "
    "how many much show list give find return all each every that this those these there their its it "
    "do does did has have had me tell name names number id than more less most least per as not no".split())


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


def schema_items(schema) -> list[SchemaItem]:
    """A :class:`~vantage_core.data.example.Schema` -> its tables, then every table's columns."""
    fk_cols = {(fk.table.lower(), fk.column.lower()) for fk in schema.foreign_keys}
    fk_cols |= {(fk.ref_table.lower(), fk.ref_column.lower()) for fk in schema.foreign_keys}
    items = []
    for ti, t in enumerate(schema.tables):
        natural = t.natural_name or t.name.replace("_", " ")
        items.append(SchemaItem(t.name, None, tuple(stem(w) for w in normalize(natural).split()), ti,
                                text=natural.lower()))
    for ti, t in enumerate(schema.tables):
        pks = {p.lower() for p in t.primary_keys}
        for c in t.columns:
            natural = c.natural_name or c.name.replace("_", " ")
            items.append(SchemaItem(t.name, c.name, tuple(stem(w) for w in normalize(natural).split()), ti,
                                    col_type=c.type, primary=c.name.lower() in pks,
                                    foreign=(t.name.lower(), c.name.lower()) in fk_cols, text=natural.lower()))
    return items


def column_values(db_path: str | Path, schema, per_column: int = 5000, max_chars: int = 40) -> dict[tuple[str, str], set[str]]:
    """Normalized distinct text values of every text column: (table, column) lower -> values."""
    return _column_values(str(db_path), tuple((t.name, tuple(c.name for c in t.columns if c.type == "text"))
                                              for t in schema.tables), per_column, max_chars)


@lru_cache(maxsize=256)
def _column_values(db_path: str, tables: tuple, per_column: int, max_chars: int) -> dict:
    out: dict[tuple[str, str], set[str]] = {}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    try:
        for table, cols in tables:
            for col in cols:
                try:
                    rows = conn.execute(f'SELECT DISTINCT "{col}" FROM "{table}" WHERE "{col}" IS NOT NULL '
                                        f'LIMIT {per_column}').fetchall()
                except sqlite3.DatabaseError:
                    continue
                vals = {normalize(str(r[0])) for r in rows if len(str(r[0])) <= max_chars}
                out[(table.lower(), col.lower())] = {v for v in vals if v}
    finally:
        conn.close()
    return out


@lru_cache(maxsize=64)
def cased_values(db_path: str, per_column: int = 2000, max_chars: int = 60) -> dict[str, str]:
    """Every short text cell value of a database, lower-cased -> as stored (for writing a
    value copied from the question the way the database spells it)."""
    out: dict[str, str] = {}
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    conn.text_factory = lambda b: b.decode("utf-8", errors="replace")
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            try:
                cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{t}")')]
            except sqlite3.DatabaseError:
                continue
            for c in cols:
                try:
                    rows = conn.execute(f'SELECT DISTINCT "{c}" FROM "{t}" WHERE typeof("{c}") = \'text\' '
                                        f'LIMIT {per_column}').fetchall()
                except sqlite3.DatabaseError:
                    continue
                for (v,) in rows:
                    if isinstance(v, str) and len(v) <= max_chars:
                        out.setdefault(v.lower(), v)
    finally:
        conn.close()
    return out


@dataclass
class Links:
    """Linking features of one question against one schema."""

    item_name: list[int]  # per item: NAME_NONE / NAME_PARTIAL / NAME_EXACT
    item_value: list[int]  # per item: 1 when a question n-gram is one of the column's values
    word_table: list[int] = field(default_factory=list)  # per question word: best table-name match
    word_column: list[int] = field(default_factory=list)  # per question word: best column-name match
    word_value: list[int] = field(default_factory=list)  # per question word: part of a value match


def _find(seq: tuple[str, ...], words: list[str]) -> list[int]:
    """Start positions where ``seq`` occurs contiguously in ``words``."""
    n = len(seq)
    return [i for i in range(len(words) - n + 1) if tuple(words[i:i + n]) == seq] if n else []


def link(question_words: list[str], items: list[SchemaItem],
         values: dict[tuple[str, str], set[str]] | None = None, max_ngram: int = 4) -> Links:
    """Match the question's words (any tokenization into words) against the schema items.

    An item is an EXACT match when its whole name occurs as consecutive question words, PARTIAL
    when one of its non-stopword name words does; a column is a VALUE match when a question
    n-gram (up to ``max_ngram`` words, not all stopwords) equals one of its cell values.
    """
    words = [stem(normalize(w)) for w in question_words]
    raw = [normalize(w) for w in question_words]
    present = set(words)
    n_words = len(words)
    links = Links([NAME_NONE] * len(items), [0] * len(items),
                  [NAME_NONE] * n_words, [NAME_NONE] * n_words, [0] * n_words)
    for idx, item in enumerate(items):
        word_tags = links.word_table if item.column is None else links.word_column
        starts = _find(item.words, words)
        if starts:
            links.item_name[idx] = NAME_EXACT
            for s in starts:
                for j in range(s, s + len(item.words)):
                    word_tags[j] = NAME_EXACT
            continue
        content = [w for w in item.words if w not in STOPWORDS and len(w) > 1]
        if any(w in present for w in content):
            links.item_name[idx] = NAME_PARTIAL
            for j, w in enumerate(words):
                if w in content:
                    word_tags[j] = max(word_tags[j], NAME_PARTIAL)
    if values:
        grams: dict[str, list[tuple[int, int]]] = {}
        for n in range(1, max_ngram + 1):
            for s in range(n_words - n + 1):
                span = [w for w in raw[s:s + n] if w]
                if not span or all(w in STOPWORDS or len(w) < 2 for w in span):
                    continue
                grams.setdefault(" ".join(span), []).append((s, s + n))
        for idx, item in enumerate(items):
            if item.column is None:
                continue
            vals = values.get((item.table.lower(), item.column.lower()))
            if not vals:
                continue
            for gram, spans in grams.items():
                if gram in vals:
                    links.item_value[idx] = 1
                    for s, e in spans:
                        for j in range(s, e):
                            links.word_value[j] = 1
    return links


class LinkEmbedding(nn.Module):
    """Learned embeddings of the linking features, added to item and question-token states."""

    def __init__(self, d_model: int):
        super().__init__()
        self.item_name = nn.Embedding(3, d_model)
        self.item_value = nn.Embedding(2, d_model)
        self.word_table = nn.Embedding(3, d_model)
        self.word_column = nn.Embedding(3, d_model)
        self.word_value = nn.Embedding(2, d_model)
        for emb in (self.item_name, self.item_value, self.word_table, self.word_column, self.word_value):
            emb.weight = emb.weight * 0.02  # start near zero: the features nudge, then learn

    def item_states(self, name: mx.array, value: mx.array) -> mx.array:
        """(B, N) int features -> (B, N, d)."""
        return self.item_name(name) + self.item_value(value)

    def word_states(self, table: mx.array, column: mx.array, value: mx.array) -> mx.array:
        """(B, Q) int features -> (B, Q, d)."""
        return self.word_table(table) + self.word_column(column) + self.word_value(value)
