"""``sql_actions``: decoding a pointer model (``data.target: actions``) allowed only what SQLite
accepts.

SQL is decoded FROM first (``vantage_core.data.sql_actions.reorder``): a table only right after
FROM/JOIN and never twice in a block, a column only of a table its block has named, a join
condition between two different tables (along a foreign key where one links them, with
``fk_joins``), balanced parentheses, value spans that start at a word, ``*`` only in ``SELECT *``
and ``count(*)``, no select item twice, one item in a subquery compared with a value, as many
items on both sides of a set operation, a block selects before its clauses, and clauses come once
each in SQL's order. ``tests/test_constraint_sql_actions.py`` walks real Spider gold queries
through the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

import mlx.core as mx

from vantage_core.api import (BOS, CLAUSES, EOS, ITEM, MAX_SPAN, PAD, QUESTION, SET_OPS, VALUE_MARKERS, VOCAB,
                              SchemaItem, schema_items)


@dataclass(frozen=True)
class Select:
    """Where a query block is in its select list; ``need``: how many items it must select (a
    subquery compared with a value selects one, the right side of a set operation as many as
    its left side)."""

    base: int  # parenthesis depth of the block's own tokens
    phase: int = 0  # 0: before SELECT, 1: in the select list, 2: after it
    count: int = 0  # items started so far
    need: int | None = None
    seen: frozenset = frozenset()  # schema items written as a whole select item
    clause: int = -1  # index in CLAUSES of the block's last clause keyword


LEAVE_SELECT = CLAUSES + SET_OPS + (")", EOS)
# a query cannot end right after these: each wants an operand or a name after it
DANGLING = frozenset(CLAUSES + SET_OPS + ("select", "from", "join", "on", "by", "and", "or", "not", "in", "like",
                                          "between", "distinct", "as", "=", "!=", "<", ">", "<=", ">=", "(", ",",
                                          "+", "-", "/") + VALUE_MARKERS)


@dataclass
class Hyp:
    actions: list
    score: float
    need: int = 0  # 2: a value marker wants its start piece; 1: its end piece
    start: int = 0
    depth: int = 0
    blocks: tuple = ((),)  # tables named by each open query block, innermost last
    parens: tuple = ()  # per open "(": True when it opened a subquery
    sel: tuple = (Select(0),)  # the select list of each open query block, innermost last


def _item_start(h: Hyp, itos: list[str]) -> bool:
    """The next action starts a select item (right after SELECT, SELECT DISTINCT or a comma)."""
    last = _tok_id(h.actions[-1], itos)
    before = _tok_id(h.actions[-2], itos) if len(h.actions) > 1 else None
    return last in ("select", ",") or (last == "distinct" and before == "select")


def _select_rules(h: Hyp, m: np.ndarray, ids: dict, itos: list[str]) -> None:
    """Mask what SQLite rejects in a select list: ``*`` outside ``SELECT *`` / ``count(*)``, and a
    select list that ends with the wrong number of items (set operations, compared subqueries)."""
    last = _tok_id(h.actions[-1], itos)
    before = _tok_id(h.actions[-2], itos) if len(h.actions) > 1 else None
    if "*" in ids and not (last == "select" or (last == "distinct" and before == "select")
                           or (last == "(" and before == "count")):
        m[ids["*"]] = -np.inf
    top = h.sel[-1]
    if h.depth != top.base:
        return
    if top.phase == 0:  # FROM first: the block selects before any clause, set operation or end
        for t in LEAVE_SELECT:
            if t in ids:
                m[ids[t]] = -np.inf
        return
    for t in CLAUSES[:top.clause + 1]:  # each clause once, in SQL's order
        if t in ids:
            m[ids[t]] = -np.inf
    if top.phase != 1 or top.need is None:
        return
    if top.count < top.need:
        for t in LEAVE_SELECT:
            if t in ids:
                m[ids[t]] = -np.inf
    elif "," in ids:
        m[ids[","]] = -np.inf


def _advance_select(h: Hyp, kind: int, value: int, itos: list[str], items) -> tuple:
    """``h.sel`` after the action (the same step as :func:`_advance` applies to the blocks)."""
    sel, top = h.sel, h.sel[-1]
    tok = itos[value] if kind == VOCAB else None
    last = _tok_id(h.actions[-1], itos)
    if tok == "from" and last == "(" and h.parens:  # a subquery: one item unless it is a FROM source
        source = len(h.actions) > 1 and _tok_id(h.actions[-2], itos) in ("from", "join")
        return sel + (Select(h.depth, need=None if source else 1),)
    if tok == ")" and h.parens and h.parens[-1]:
        return sel[:-1] if len(sel) > 1 else sel
    if h.depth != top.base:
        return sel
    if tok in SET_OPS:
        need = top.need if top.need is not None else top.count
        return sel[:-1] + (Select(top.base, need=need),)
    if tok == "select" and top.phase == 0:
        return sel[:-1] + (Select(top.base, 1, 1, top.need),)
    if tok in CLAUSES and top.phase >= 1:
        return sel[:-1] + (Select(top.base, 2, top.count, top.need, top.seen, CLAUSES.index(tok)),)
    if top.phase == 1:
        if tok == ",":
            return sel[:-1] + (Select(top.base, 1, top.count + 1, top.need, top.seen),)
        if kind == ITEM and items is not None and _item_start(h, itos):
            return sel[:-1] + (Select(top.base, 1, top.count, top.need, top.seen | {value}),)
    return sel


def fk_partners(items: list[SchemaItem], foreign_keys) -> dict[int, set[int]]:
    """Column item -> the column items it is joined to by a foreign key (both directions).
    ``foreign_keys``: objects or dicts with table, column, ref_table, ref_column."""
    index = {(it.table.lower(), it.column.lower()): i for i, it in enumerate(items) if it.column is not None}
    out: dict[int, set[int]] = {}
    for fk in foreign_keys:
        get = fk.get if isinstance(fk, dict) else lambda k, fk=fk: getattr(fk, k)
        a = index.get((get("table").lower(), get("column").lower()))
        b = index.get((get("ref_table").lower(), get("ref_column").lower()))
        if a is not None and b is not None and a != b:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


def _tok_id(action, itos: list[str]) -> str | None:
    return itos[action[1]] if action[0] == VOCAB else None


def _advance(h: Hyp, kind: int, value: int, score: float, itos: list[str], items=None) -> Hyp:
    n = Hyp(h.actions + [(kind, value)], score, h.need, h.start, h.depth, h.blocks, h.parens,
            _advance_select(h, kind, value, itos, items))
    if kind == VOCAB:
        tok = itos[value]
        last = itos[h.actions[-1][1]] if h.actions[-1][0] == VOCAB else None
        if tok in VALUE_MARKERS:
            n.need = 2
        n.depth += tok == "("
        n.depth -= tok == ")"
        if tok == "(":
            n.parens = h.parens + (False,)
        elif tok == "from" and last == "(" and h.parens:  # a subquery opens a block
            n.parens = h.parens[:-1] + (True,)
            n.blocks = h.blocks + ((),)
        elif tok == ")" and h.parens:
            n.parens = h.parens[:-1]
            if h.parens[-1]:
                n.blocks = h.blocks[:-1]
        elif tok in SET_OPS:
            n.blocks = h.blocks[:-1] + ((),)
    elif kind == ITEM and items is not None and items[value].column is None:
        n.blocks = h.blocks[:-1] + (h.blocks[-1] + (items[value].table_index,),)
    elif kind == QUESTION:
        if h.need == 2:
            n.need, n.start = 1, value
        elif h.need == 1:
            n.need = 0
    return n


class SQLActionsProcessor:
    """The rules for one request: masks the next action of each row of a beam, given the ids
    it generated (the output space of a pointer model: vocabulary, items, question pieces)."""

    def __init__(self, itos: list[str], items: list[SchemaItem], q_ok: np.ndarray, q_start: np.ndarray,
                 fks: dict[int, set[int]] | None):
        self.itos, self.items, self.fks = itos, items, fks
        self.ids = {t: i for i, t in enumerate(itos)}
        self.V, self.N, self.Q = len(itos), len(items), len(q_ok)
        self.q_ok, self.q_start = np.asarray(q_ok, bool), np.asarray(q_start, bool)
        self.item_ok = np.ones(self.N, bool)
        self.vocab_ok = np.ones(self.V, bool)
        self.vocab_ok[[self.ids[PAD], self.ids[BOS]]] = False
        self._states: dict[tuple, Hyp] = {(): Hyp([(VOCAB, self.ids[BOS])], 0.0)}

    def action(self, i: int) -> tuple[int, int]:
        """An output id -> (kind, value), vocabulary values as ids."""
        return (VOCAB, i) if i < self.V else (ITEM, i - self.V) if i < self.V + self.N else (QUESTION, i - self.V - self.N)

    def state(self, generated: Sequence[int]) -> Hyp:
        """The rules' state after ``generated`` (memoized by prefix: each step extends one)."""
        key = tuple(generated)
        if key not in self._states:
            prev = self.state(key[:-1])
            kind, value = self.action(key[-1])
            self._states[key] = _advance(prev, kind, value, 0.0, self.itos, self.items)
        return self._states[key]

    def mask(self, generated: Sequence[int]) -> np.ndarray:
        """Additive mask (V + N + Q,) of the actions allowed after ``generated``."""
        return self.allowed(self.state(generated))

    def allowed(self, h: Hyp) -> np.ndarray:
        """Additive mask (V + N + Q,) of the actions valid after ``h``: inside a value span its
        question pieces, else keywords and schema items."""
        V, N, Q = self.V, self.N, self.Q
        m = np.full(V + N + Q, -np.inf, dtype=np.float32)
        if h.need == 2:  # a value's first piece: one that starts a word
            m[V + N:][self.q_start & self.q_ok] = 0
        elif h.need == 1:  # its last piece: at most MAX_SPAN pieces on
            sel = np.zeros(Q, bool)
            sel[h.start:min(Q, h.start + MAX_SPAN)] = True
            m[V + N:][sel & self.q_ok] = 0
        else:
            self._allow_words_and_items(h, m)
        if not np.isfinite(m).any():
            m[self.ids[EOS]] = 0
        return m

    def _allow_words_and_items(self, h: Hyp, m: np.ndarray) -> None:
        """Unmask in ``m`` the keywords and schema items valid after ``h`` (outside a value)."""
        V, N, ids = self.V, self.N, self.ids
        m[:V][self.vocab_ok] = 0
        last = _tok_id(h.actions[-1], self.itos)
        if self.items is not None:  # FROM-first: tables right after from/join, else visible columns
            ok = self._items_after(h, last, m)
            top = h.sel[-1]
            if top.phase == 1 and h.depth == top.base and _item_start(h, self.itos):
                for j in top.seen:  # no select item twice
                    ok[j] = False
            m[V:V + N][self.item_ok & ok] = 0
            if last in ("from", "join", "on"):  # a table, or the join condition's first column
                m[:V] = -np.inf
        else:
            m[V:V + N][self.item_ok] = 0
        _select_rules(h, m, ids, self.itos)
        if h.depth == 0:
            m[ids[")"]] = -np.inf
        if h.depth > 0 or len(h.actions) < 2 or last in DANGLING:
            m[ids[EOS]] = -np.inf

    def _items_after(self, h: Hyp, last: str | None, m: np.ndarray) -> np.ndarray:
        """Which schema items may follow ``h``: a table right after FROM/JOIN that its block has
        not named, else a column of the block's tables (not an enclosing block's); in a join
        condition, the columns that relate the joined table to the others. Right after ``on a.x =``
        no keyword may come either (``m``)."""
        named = h.blocks[-1]
        ok = np.zeros(self.N, bool)
        for j, it in enumerate(self.items):
            if it.column is None:
                ok[j] = last in ("from", "join") and it.table_index not in named
            else:
                ok[j] = it.table_index in named and last not in ("from", "join")
        if last == "=" and len(h.actions) >= 3 and h.actions[-2][0] == ITEM and _tok_id(h.actions[-3], self.itos) == "on":
            ok = self._join_partner_columns(h.actions[-2][1], ok)
            m[:self.V] = -np.inf
        elif last == "on" and self.fks and len(h.actions) >= 2 and h.actions[-2][0] == ITEM:
            joined = self.items[h.actions[-2][1]].table_index
            linked = self._columns_linking(joined, set(named) - {joined})
            if (ok & linked).any():
                ok &= linked
        return ok

    def _join_partner_columns(self, first: int, ok: np.ndarray) -> np.ndarray:
        """``ok`` narrowed to the second column of ``on <first> =``: one of another table (``on
        a.x = a.y`` never joins), along a foreign key of ``first`` where one fits."""
        same = self.items[first].table_index
        other = np.zeros(self.N, bool)
        other[:len(self.items)] = [it.column is not None and it.table_index != same for it in self.items]
        ok = ok & other
        partners = np.zeros(self.N, bool)
        for p in (self.fks or {}).get(first, ()):
            partners[p] = True
        if (ok & partners).any():  # 96% of Spider's join conditions follow a foreign key
            ok &= partners
        return ok

    def _columns_linking(self, joined: int, before: set) -> np.ndarray:
        """The column items of a foreign key between table ``joined`` and one of the tables
        ``before`` (the first column of its join condition)."""
        linked = np.zeros(self.N, bool)
        for a_idx, partners in self.fks.items():
            ta = self.items[a_idx].table_index
            for p in partners:
                tb = self.items[p].table_index
                if (ta == joined and tb in before) or (tb == joined and ta in before):
                    linked[a_idx] = True
        return linked

    def host_masks(self, generated: Sequence[Sequence[int]], width: int) -> np.ndarray:
        """Additive masks (B, V + N + Q) for each row; ``width``: what the model scores."""
        masks = np.stack([self.mask(g) for g in generated])
        if masks.shape[1] != width:
            raise ValueError(f"sql_actions: the model scores {width} actions, the request has "
                             f"{masks.shape[1]} (vocabulary {self.V}, items {self.N}, question pieces {self.Q})")
        return masks

    def __call__(self, generated: Sequence[Sequence[int]], logits: mx.array) -> mx.array:
        return logits + mx.array(self.host_masks(generated, logits.shape[-1]))

    def finalize(self, generated: list[int]) -> list[int] | None:
        """``generated`` when it is a whole query (the end is allowed after it), else None."""
        return list(generated) if self.mask(generated)[self.ids[EOS]] == 0 and len(generated) > 1 else None


class SQLActionsConstraint:
    """The validity rules of pointer-model SQL, behind the constraint contract."""

    targets = ("actions",)  # a pointer model's actions (keywords, schema items, question spans)

    def __init__(self, fk_joins: bool = True):
        self.fk_joins = bool(fk_joins)

    def bind(self, schema: Any, tokenizer: Any, eos_id: int, features: dict | None = None) -> SQLActionsProcessor:
        """``features``: the request's featurized question (``vantage_core.data.actions.featurize``),
        for which pieces a value may be copied from."""
        if features is None or not hasattr(tokenizer, "itos"):
            from vantage_core.api import ConfigError

            raise ConfigError("inference.constraint: sql_actions constrains a pointer model (data.target: "
                              "actions); for a model that writes SQL text use sql_schema")
        items = schema_items(schema)
        q_ok = np.asarray(features["copy"], bool)
        fks = fk_partners(items, schema.foreign_keys) if self.fk_joins else None
        return SQLActionsProcessor(tokenizer.itos, items, q_ok, np.asarray(features["start"], bool), fks)
