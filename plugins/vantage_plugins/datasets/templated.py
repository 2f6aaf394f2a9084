"""``templated``: question/SQL pairs that the ``synthetic`` dataset's templates write over a
SQLite database of your own (``vantage adapt`` trains on them beside the pairs a user gives).

Each table with a text column and a number column that are not keys becomes a table of the
templates: its label is the text column with the most distinct values, its category the one with
the fewest, its numbers up to three number columns, its values those of its first rows. A
foreign key from one such table to another lets the join templates use both. Only names that SQL
writes bare (letters, digits, underscores) are used, and the database's notes (``notes``) hide
what they hide. Every query runs on the database, read-only and within a time budget, and is
kept when it returns a value; the questions spell names and values as the database does.
"""

from __future__ import annotations

import dataclasses
import random
import re
import sqlite3
import time

from vantage_core.api import DataError, Example, LoadReport, Schema, Table, connect_readonly
from vantage_plugins.datasets.files import database_schema
from vantage_plugins.datasets.synthetic import JOIN_TEMPLATES, TEMPLATES, TableInstance, generate_pairs, make_pair

BARE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ROWS_READ = 200  # rows of each table whose values the questions may name
MAX_NUMBERS = 3  # number columns per table
MAX_VALUE_CHARS = 40  # longer text values are not put into questions
SECONDS = 30.0  # the queries of one load, together; what runs past it is interrupted


class TemplatedDataset:
    """``n`` distinct template pairs over the SQLite file ``db`` (none from the templates named in
    ``leave_out``); one split, ``train``."""

    splits = ("train",)

    def __init__(self, db: str = "", n: int = 200, seed: int = 0, notes: str | None = None,
                 leave_out: list[str] | None = None):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise DataError(f"templated: n must be a whole number of at least 1, got {n!r}")
        unknown = sorted(set(leave_out or ()) - TEMPLATES)
        if unknown:
            raise DataError(f"templated: leave_out: unknown template(s) {', '.join(unknown)}; the templates are "
                            f"{', '.join(sorted(TEMPLATES))}")
        self.db, self.n, self.seed, self.notes = db, n, seed, notes
        self.templates = TEMPLATES - frozenset(leave_out or ())  # those drawn

    def load(self, split: str) -> LoadReport:
        if split not in self.splits:
            raise DataError(f"templated has no split {split!r}; splits: {', '.join(self.splits)}")
        schema = database_schema("templated", self.db, self.notes)
        conn = connect_readonly(self.db)
        try:
            deadline = time.monotonic() + SECONDS
            conn.set_progress_handler(lambda: time.monotonic() > deadline, 10_000)
            pairings = table_pairings(schema, template_tables(conn, schema), self.templates)
            rng = random.Random(f"templated:{self.seed}:{schema.db_id}")

            def draw() -> tuple[str, str, str]:
                parent, child = rng.choice(pairings)
                return make_pair(rng, parent, child, self.templates)

            pairs = generate_pairs(conn, draw, self.n, skip_errors=True) if pairings else []
        finally:
            conn.close()
        report = LoadReport([Example(question, sql, schema.db_id, schema, [self.db], source="templated",
                                     extras={"template": template}, id=f"templated/{schema.db_id}/{j}")
                             for j, (template, question, sql) in enumerate(pairs)])
        if not pairings:
            report.notes.append(f"no pairs: no table of {self.db} has a text and a number column that are not keys "
                                f"and have bare names")
        return report


def key_columns(schema: Schema, table: Table) -> set[str]:
    """The lower-cased columns of ``table`` that are keys: primary, or on either side of a foreign key."""
    keys = {k.lower() for k in table.primary_keys}
    for fk in schema.foreign_keys:
        if fk.table.lower() == table.name.lower():
            keys.add(fk.column.lower())
        if fk.ref_table.lower() == table.name.lower():
            keys.add(fk.ref_column.lower())
    return keys


def template_tables(conn: sqlite3.Connection, schema: Schema) -> dict[str, TableInstance]:
    """Each table the templates can use, by lower-cased name, with the values of its first rows."""
    out = {}
    for table in schema.tables:
        instance = template_table(conn, table, key_columns(schema, table))
        if instance is not None:
            out[table.name.lower()] = instance
    return out


def template_table(conn: sqlite3.Connection, table: Table, keys: set[str]) -> TableInstance | None:
    """``table`` as the templates' table (label, category, numbers and rows), or None when it has
    no text and number columns to use or fewer than two rows holding a value in each."""
    columns = [c for c in table.columns if BARE_NAME.fullmatch(c.name) and c.name.lower() not in keys]
    texts = [c.name for c in columns if c.type == "text"]
    numbers = [c.name for c in columns if c.type == "number"]
    if not BARE_NAME.fullmatch(table.name) or not texts or not numbers:
        return None
    names = texts + numbers
    read = conn.execute(f"SELECT {', '.join(names)} FROM {table.name} LIMIT {ROWS_READ}").fetchall()
    rows = [dict(zip(names, r)) for r in read]
    distinct = {c: len({r[c] for r in rows if usable_text(r[c])}) for c in texts}
    label = max(texts, key=lambda c: distinct[c])
    others = [c for c in texts if c != label and distinct[c] >= 2]
    category = min(others, key=lambda c: distinct[c]) if others else label
    numbers = [c for c in numbers if len({r[c] for r in rows if usable_number(r[c])}) >= 2][:MAX_NUMBERS]
    rows = [r for r in rows if usable_text(r[label]) and usable_text(r[category])
            and all(usable_number(r[c]) for c in numbers)]
    if not numbers or len(rows) < 2:
        return None
    return TableInstance(table.name, label, category, numbers, rows)


def usable_text(value: object) -> bool:
    """Whether a cell can be named in a question: short text on one line."""
    return isinstance(value, str) and 0 < len(value.strip()) <= MAX_VALUE_CHARS and "\n" not in value


def usable_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table_pairings(schema: Schema, tables: dict[str, TableInstance],
                   templates: frozenset[str]) -> list[tuple[TableInstance, TableInstance]]:
    """The (parent, child) pairs a template may be drawn for: each table alone (``fk`` None: no
    join), where a template without a join is allowed, and each foreign key between two usable
    tables (the child's ``fk``, the parent's ``key``)."""
    out = [(t, t) for t in tables.values()] if templates - JOIN_TEMPLATES else []
    for fk in schema.foreign_keys:
        parent, child = tables.get(fk.ref_table.lower()), tables.get(fk.table.lower())
        if (parent is None or child is None or parent is child or not templates & JOIN_TEMPLATES
                or not BARE_NAME.fullmatch(fk.column) or not BARE_NAME.fullmatch(fk.ref_column)):
            continue
        out.append((dataclasses.replace(parent, key=fk.ref_column), dataclasses.replace(child, fk=fk.column)))
    return out
