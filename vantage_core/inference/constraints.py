"""What a decoding constraint is, and a checker for what constrained decoding promises.

A :class:`Constraint` plugin (``register_constraints``) is bound once per request to the
schema and the tokenizer; the binding is a :class:`LogitsProcessor` the decoder calls at every
step with the tokens generated so far in each row, and which masks the logits of the tokens
that cannot continue a valid output.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import mlx.core as mx
import numpy as np

from vantage_core.sql.schema import Schema
from vantage_core.sql.names import quoted


class LogitsProcessor(Protocol):
    def __call__(self, generated: Sequence[Sequence[int]], logits: mx.array) -> mx.array:
        """``logits`` (B, V) for the next token of each row; returns them with the forbidden
        tokens at ``-inf``. ``generated[b]`` holds row b's generated ids (prompt excluded).

        A processor may also have ``finalize(ids) -> ids | None``: decoding passes it every
        output and keeps what it returns (a valid prefix), or marks the output unfinished on None;
        and ``host_masks(generated, width) -> np.ndarray`` (B, width) of additive masks, which beam
        search then adds on the host instead of calling it."""


class Constraint(Protocol):
    """What a registered constraint factory returns.

    The factory (a class) may set ``targets``: the ``data.target`` values of the models whose
    output it masks (``("tokens",)``: SQL text tokens; ``("actions",)``: a pointer model's
    actions). The engine then refuses it up front for any other model; without ``targets`` it
    is assumed to fit every model."""

    targets: tuple[str, ...]

    def bind(self, schema: Schema, tokenizer: Any, eos_id: int, features: dict | None = None) -> LogitsProcessor:
        """A processor for one request on ``schema`` (it may keep caches across the requests on
        that schema). ``features``: for a pointer model (``data.target: actions``) the request's
        featurized question (``vantage_core.data.actions.featurize``); None for a token model."""


def apply_mask(logits: mx.array, allowed: np.ndarray) -> mx.array:
    """``logits`` (B, V) with the entries where ``allowed`` (B, V) bool is False set to -inf."""
    return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


def token_surfaces(tokenizer: Any, vocab_size: int) -> list[str]:
    """The text each token id adds when appended to a decoded sequence (leading space included).

    Decoding ids one at a time drops a SentencePiece piece's leading space, so each id is
    decoded after an anchor and the anchor's own text is cut off. Ids that add nothing
    (control symbols) or a broken byte come back as ``""`` (never allowed by a constraint).
    """
    anchor_ids = tokenizer.encode("a")
    anchor = tokenizer.decode(anchor_ids)
    out = []
    for i in range(vocab_size):
        try:
            text = tokenizer.decode(list(anchor_ids) + [i])
        except Exception:  # an id some tokenizers refuse to decode alone
            text = anchor
        piece = text[len(anchor):] if text.startswith(anchor) else ""
        out.append("" if "\ufffd" in piece else piece)
    return out


def schema_violations(sql: str, schema: Schema) -> list[str]:
    """Why ``sql`` is not a SQLite query over ``schema`` only; empty when it is.

    Checks that sqlglot parses it (SQLite dialect), that every table and column it names
    exists (case-insensitively), and that SQLite itself prepares it against an empty database
    with the schema's tables (sqlglot accepts some text SQLite refuses, such as ``SELECT FROM t``).
    A double-quoted name that is no column is SQLite's string literal fallback, and is accepted.
    """
    import sqlglot
    from sqlglot import exp

    try:
        trees = sqlglot.parse(sql, read="sqlite")
    except sqlglot.errors.SqlglotError as exc:
        return [f"does not parse: {str(exc).splitlines()[0]}"]
    trees = [t for t in trees if t is not None]
    if len(trees) != 1:
        return [f"expected one statement, got {len(trees)}"]
    tree = trees[0]
    tables = {t.name.lower() for t in schema.tables}
    columns = {c.name.lower() for t in schema.tables for c in t.columns}
    aliases = {a.name.lower() for a in tree.find_all(exp.TableAlias) if a.name}
    problems = []
    for table in tree.find_all(exp.Table):
        if table.name and table.name.lower() not in tables:
            problems.append(f"unknown table {table.name!r}")
    for col in tree.find_all(exp.Column):
        name = col.name
        ident = col.this
        if isinstance(ident, exp.Star) or name == "*":
            pass
        elif name.lower() not in columns and not (isinstance(ident, exp.Identifier) and ident.quoted and not col.table):
            problems.append(f"unknown column {name!r}")
        if col.table and col.table.lower() not in tables | aliases:
            problems.append(f"unknown table or alias {col.table!r}")
    problem = sqlite_prepare_error(sql, schema)
    if problem:
        problems.append(f"SQLite refuses it: {problem}")
    return problems


def sqlite_prepare_error(sql: str, schema: Schema) -> str | None:
    """SQLite's error when preparing ``sql`` on an empty in-memory copy of ``schema``; None if none."""
    import sqlite3

    con = sqlite3.connect(":memory:")
    try:
        for t in schema.tables:
            cols = ", ".join(quoted(c.name) for c in t.columns) or "_"
            con.execute(f"CREATE TABLE {quoted(t.name)} ({cols})")
        con.execute("EXPLAIN " + sql)
        return None
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        con.close()
