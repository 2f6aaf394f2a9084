"""``variants``: the pairs of a ``pairs`` file again, each with one value it asks about swapped
for another value of the same column (``vantage adapt`` trains on them beside the pairs)::

    {"question": "Who are the friends of Bob?", "sql": "SELECT friend FROM PersonFriend WHERE name = 'Bob'"}
    -> Who are the friends of Zach?  |  SELECT friend FROM PersonFriend WHERE name = 'Zach'

A value can be swapped where the SQL compares a column with a literal (``=``, ``!=``, ``<>``,
``<``, ``<=``, ``>``, ``>=``) and the question spells that literal as a whole word, exactly as the
SQL writes it. Its replacements are the column's other distinct values (text for a quoted
literal, numbers for a number; short, on one line, without quotes, not already in the question),
written into the question and the SQL where the old value was. A variant is kept when its SQL
runs on the database, read-only and within a time budget, and returns a value. ``n`` variants
are drawn by ``seed``, taking the pairs in turn; a pair with no value to swap gives none.
``leave_out``: variant ids (``variants/<line>/<value>``) not to give.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from vantage_core.api import DataError, Example, LoadReport, Schema, connect_readonly, quoted
from vantage_plugins.datasets.pairs import PairsDataset

VALUES_READ = 200  # distinct values of a column that may replace one
MAX_VALUE_CHARS = 40
SECONDS = 30.0  # the queries of one load, together; what runs past it is interrupted


@dataclass(frozen=True)
class ValueSlot:
    """A literal of a pair's SQL that its question spells, and the column it is compared with."""

    text: str  # as the SQL and the question write it (a string without its quotes)
    is_string: bool
    table: str
    column: str


class VariantsDataset:
    """Up to ``n`` variants of the pairs in the JSON Lines file ``path`` over the SQLite file
    ``db``; one split, ``train``."""

    splits = ("train",)

    def __init__(self, path: str = "", db: str = "", n: int = 200, seed: int = 0, notes: str | None = None,
                 leave_out: list[str] | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"variants: n must be a whole number of at least 1, got {n!r}")
        self.pairs = PairsDataset(path, db, notes)
        self.db, self.n, self.seed, self.leave_out = db, n, seed, frozenset(leave_out or ())

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"variants has no split {split!r}; splits: {', '.join(self.splits)}")
        pairs = self.pairs.load("train")
        report = LoadReport([], notes=list(pairs.notes))
        conn = connect_readonly(self.db)
        try:
            deadline = time.monotonic() + SECONDS
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            rng = random.Random(f"variants:{self.seed}:{Path(self.db).name}")
            queues = [swaps(conn, pair, rng) for pair in pairs.examples]
            report.examples = self.drawn(conn, pairs.examples, queues)
        finally:
            conn.close()
        if not report.examples:
            report.notes.append(f"no variants: no pair of {self.pairs.path} compares a column with a value its "
                                f"question spells, or none of the swaps returned a value")
        return report

    def drawn(self, conn: sqlite3.Connection, pairs: list[Example], queues: list[list]) -> list[Example]:
        """Up to ``n`` variants, one from each pair in turn, each from the next swap in its queue
        whose SQL runs and returns a value."""
        out: list[Example] = []
        while len(out) < self.n and any(queues):
            for pair, queue in zip(pairs, queues):
                while queue and len(out) < self.n:
                    slot, value = queue.pop()
                    variant = swapped(pair, slot, value)
                    if variant is not None and variant.id not in self.leave_out and returns_value(conn, variant.sql):
                        out.append(variant)
                        break
        return out


def swaps(conn: sqlite3.Connection, pair: Example, rng: random.Random) -> list[tuple[ValueSlot, str]]:
    """Each (slot, replacement) of the pair, in an order drawn by ``rng`` that takes the slots in
    turn (popped from the end)."""
    per_slot = []
    for slot in value_slots(pair.sql, pair.question, pair.schema):
        values = replacements(conn, slot, pair.question)
        rng.shuffle(values)
        per_slot.append([(slot, v) for v in values])
    interleaved = [s for group in zip_longest_lists(per_slot) for s in group]
    return interleaved[::-1]


def zip_longest_lists(lists: list[list]) -> list[list]:
    """The first item of each list, then the second of each, ...; shorter lists drop out."""
    return [[lst[i] for lst in lists if i < len(lst)] for i in range(max(map(len, lists), default=0))]


def value_slots(sql: str, question: str, schema: Schema) -> list[ValueSlot]:
    """The literals of ``sql`` compared with a column of ``schema`` whose text ``question``
    spells as a whole word, each once; none where sqlglot cannot read the SQL."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        return []
    tables = {t.alias_or_name.lower(): t.name for t in tree.find_all(exp.Table)}
    slots: dict[tuple[str, bool], ValueSlot] = {}
    for node in tree.find_all(exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE):
        column, literal = node.this, node.expression
        if isinstance(column, exp.Literal):
            column, literal = literal, column
        if not isinstance(column, exp.Column) or not isinstance(literal, exp.Literal):
            continue
        table = column_table(column.name, column.table, tables, schema)
        text = literal.this
        if table is None or not text.strip() or not spelled(text, question):
            continue
        slots.setdefault((text, literal.is_string), ValueSlot(text, literal.is_string, table, column.name))
    return list(slots.values())


def column_table(column: str, qualifier: str, tables: dict[str, str], schema: Schema) -> str | None:
    """The schema's name of the table that holds ``column`` in a query over ``tables`` (alias ->
    name): the qualifier's, else the first of the query's tables that has such a column."""
    named = {t.name.lower(): t for t in schema.tables}
    candidates = [tables.get(qualifier.lower())] if qualifier else list(tables.values())
    for name in candidates:
        table = named.get((name or "").lower())
        if table is not None and any(c.name.lower() == column.lower() for c in table.columns):
            return table.name
    return None


def spelled(text: str, question: str) -> bool:
    return whole_word(text).search(question) is not None


def whole_word(text: str) -> re.Pattern:
    return re.compile(rf"(?<![\w.]){re.escape(text)}(?![\w]|\.\d)")


def replacements(conn: sqlite3.Connection, slot: ValueSlot, question: str) -> list[str]:
    """The other distinct values of the slot's column that can take its place, as text."""
    column = quoted(slot.column)
    try:
        rows = conn.execute(f"SELECT DISTINCT {column} FROM {quoted(slot.table)} WHERE {column} IS NOT NULL "
                            f"LIMIT {VALUES_READ}").fetchall()
    except sqlite3.Error:
        return []
    out = []
    for (value,) in rows:
        text = value_text(value, slot.is_string)
        if text is not None and text != slot.text and not spelled(text, question):
            out.append(text)
    return out


def value_text(value: object, is_string: bool) -> str | None:
    """How a cell is written in a question and as a literal of the slot's kind; None when it
    cannot be (text for a number, long or multi-line text, quotes)."""
    if is_string:
        if not isinstance(value, str):
            return None
        text = value.strip()
        ok = text == value and 0 < len(text) <= MAX_VALUE_CHARS and not re.search(r"[\n'\"%]", text)
        return text if ok else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def swapped(pair: Example, slot: ValueSlot, value: str) -> Example | None:
    """The pair with ``slot``'s value replaced by ``value`` in its question and SQL; None when the
    SQL does not write the value where the slot says (the same text elsewhere, a LIMIT say)."""
    if slot.is_string:
        pattern = re.compile(rf"(['\"]){re.escape(slot.text)}\1")
        sql = pattern.sub(lambda m: f"{m.group(1)}{value}{m.group(1)}", pair.sql)
    else:
        outside_quotes = re.sub(r"'[^']*'|\"[^\"]*\"", lambda m: " " * len(m.group(0)), pair.sql)
        if len(whole_word(slot.text).findall(outside_quotes)) != 1:
            return None
        match = whole_word(slot.text).search(outside_quotes)
        sql = pair.sql[:match.start()] + value + pair.sql[match.end():]
    question = whole_word(slot.text).sub(lambda _: value, pair.question)
    line = pair.extras["line"]
    return Example(question, sql, pair.db_id, pair.schema, pair.db_paths, source="variants",
                   extras={"line": line, "swapped": [slot.text, value]}, id=f"variants/{line}/{slot.text}->{value}")


def returns_value(conn: sqlite3.Connection, sql: str) -> bool:
    """Whether ``sql`` runs on ``conn`` and returns a row holding a value."""
    try:
        rows = conn.execute(sql).fetchmany(5)
    except sqlite3.Error:
        return False
    return any(v is not None for row in rows for v in row)
