"""Beam search for the pointer model, allowed only what SQLite accepts.

With the schema items, SQL is decoded FROM first: a table only right after FROM/JOIN and never
twice in a block, a column only of a table its block has named, a join condition between two
different tables (along a foreign key where one links them), balanced parentheses, value spans
that start at a word, ``*`` only in ``SELECT *`` and ``count(*)``, no select item twice, one
item in a subquery compared with a value, as many items on both sides of a set operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import mlx.core as mx

from vantage_core.data.linking import SchemaItem
from vantage_core.data.sql_actions import (BOS, CLAUSES, EOS, ITEM, MAX_SPAN, PAD, QUESTION, SET_OPS, VALUE_MARKERS,
                                           VOCAB)
from vantage_core.model.pointer import PointerSQL


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


def _allowed(h: Hyp, V: int, N: int, Q: int, vocab_ok: np.ndarray, item_ok: np.ndarray, q_ok: np.ndarray,
             ids: dict, constrained: bool, q_start: np.ndarray | None = None,
             items: list[SchemaItem] | None = None, itos: list[str] | None = None,
             fks: dict[int, set[int]] | None = None) -> np.ndarray:
    """Additive mask (V + N + Q,) of the actions valid after ``h``."""
    m = np.full(V + N + Q, -np.inf, dtype=np.float32)
    q_start = q_ok if q_start is None else q_start & q_ok
    if not constrained:
        m[:V] = 0
        m[ids[PAD]] = m[ids[BOS]] = -np.inf
        m[V:V + N][item_ok] = 0
        m[V + N:][q_ok] = 0
        return m
    if h.need == 2:
        m[V + N:][q_start] = 0
    elif h.need == 1:
        lo, hi = h.start, min(Q, h.start + MAX_SPAN)
        sel = np.zeros(Q, bool)
        sel[lo:hi] = True
        m[V + N:][sel & q_ok] = 0
    else:
        m[:V][vocab_ok] = 0
        last = itos[h.actions[-1][1]] if h.actions[-1][0] == VOCAB else None
        if items is not None:  # FROM-first: tables right after from/join, else visible columns
            named = h.blocks[-1]
            visible = set(named)  # a column of this block's tables (not an enclosing block's)
            ok = np.zeros(N, bool)
            for j, it in enumerate(items):
                if it.column is None:
                    ok[j] = last in ("from", "join") and it.table_index not in named
                else:
                    ok[j] = it.table_index in visible and last not in ("from", "join")
            if last == "=" and len(h.actions) >= 3 and h.actions[-2][0] == ITEM and _tok_id(h.actions[-3], itos) == "on":
                # a join condition relates two different tables: "on a.x = a.y" never joins
                first = h.actions[-2][1]
                same = items[first].table_index
                other = np.zeros(N, bool)
                other[:len(items)] = [it.column is not None and it.table_index != same for it in items]
                ok &= other
                partners = np.zeros(N, bool)
                for p in (fks or {}).get(first, ()):
                    partners[p] = True
                if (ok & partners).any():  # 96% of Spider's join conditions follow a foreign key
                    ok &= partners
                m[:V] = -np.inf
            elif last == "on" and fks and len(h.actions) >= 2 and h.actions[-2][0] == ITEM:
                joined = items[h.actions[-2][1]].table_index
                before = set(named) - {joined}
                linked = np.zeros(N, bool)
                for a_idx, partners in fks.items():
                    ta = items[a_idx].table_index
                    for p in partners:
                        tb = items[p].table_index
                        if (ta == joined and tb in before) or (tb == joined and ta in before):
                            linked[a_idx] = True
                if (ok & linked).any():
                    ok &= linked
            top = h.sel[-1]
            if top.phase == 1 and h.depth == top.base and _item_start(h, itos):
                for j in top.seen:  # no select item twice
                    ok[j] = False
            m[V:V + N][item_ok & ok] = 0
            if last in ("from", "join", "on"):  # a table, or the join condition's first column
                m[:V] = -np.inf
        else:
            m[V:V + N][item_ok] = 0
        _select_rules(h, m, ids, itos)
        if h.depth == 0:
            m[ids[")"]] = -np.inf
        if h.depth > 0 or len(h.actions) < 2:
            m[ids[EOS]] = -np.inf
    if not np.isfinite(m).any():
        m[ids[EOS]] = 0
    return m


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


def beam_search(model: PointerSQL, b: dict, itos: list[str], beam: int = 4, max_steps: int = 80,
                constrained: bool = True, items: list[list[SchemaItem]] | None = None,
                fks: list[dict[int, set[int]]] | None = None) -> list[list[tuple[list, float]]]:
    """Batched beam search; per example, up to ``beam`` finished (actions, log-prob) best first
    (none when no hypothesis ends within ``max_steps``).
    Actions are ``(kind, value)`` with vocabulary values as ids. With ``constrained`` and the
    examples' schema ``items``, SQL is decoded FROM-first (see :func:`reorder`): a table only
    right after FROM/JOIN and never twice in one block, a column only of a table already named;
    with ``fks`` (per example, :func:`fk_partners`) a join condition follows a foreign key
    between the joined table and one named before, where there is one."""
    ids = {t: i for i, t in enumerate(itos)}
    V = len(itos)
    q, it, qm, im = model.encode(b)
    B, Q, N = q.shape[0], q.shape[1], it.shape[1]
    qm_np, im_np, copy_np = np.array(qm), np.array(im), np.array(b["q_copy"])
    start_np = np.array(b["q_start"]) if "q_start" in b else None  # pieces a value may start with
    vocab_ok = np.ones(V, bool)
    vocab_ok[[ids[PAD], ids[BOS]]] = False
    live = [[Hyp([(VOCAB, ids[BOS])], 0.0)] for _ in range(B)]
    done: list[list[tuple[list, float]]] = [[] for _ in range(B)]
    for _ in range(max_steps):
        rows = [(i, h) for i in range(B) for h in live[i]]
        if not rows:
            break
        T = max(len(h.actions) for _, h in rows)
        kinds = np.zeros((len(rows), T), np.int32)
        vals = np.zeros((len(rows), T), np.int32)
        last = np.zeros(len(rows), np.int32)
        for r, (_, h) in enumerate(rows):  # left-aligned; read the score at each row's last step
            for t, (k, v) in enumerate(h.actions):
                kinds[r, t], vals[r, t] = k, v
            last[r] = len(h.actions) - 1
        sel = mx.array(np.array([i for i, _ in rows], np.int32))
        scores, _ = model.decode(mx.array(kinds), mx.array(vals), q[sel], it[sel], qm[sel], im[sel])
        scores = scores[mx.arange(len(rows)), mx.array(last)]  # (R, V + N + Q)
        logp = np.array(scores - mx.logsumexp(scores, axis=-1, keepdims=True))
        new_live: list[list[Hyp]] = [[] for _ in range(B)]
        cands: dict[int, list[tuple[float, Hyp, int]]] = {}
        for r, (i, h) in enumerate(rows):
            m = _allowed(h, V, N, Q, vocab_ok, im_np[i], qm_np[i] & copy_np[i], ids, constrained,
                         start_np[i] if start_np is not None else None, items[i] if items else None, itos,
                         fks[i] if fks else None)
            lp = logp[r] + m
            top = np.argpartition(-lp, min(beam, lp.size - 1))[:beam]
            for a in top:
                if np.isfinite(lp[a]):
                    cands.setdefault(i, []).append((h.score + float(lp[a]), h, int(a)))
        for i, cs in cands.items():
            cs.sort(key=lambda c: -c[0])
            for score, h, a in cs:
                if len(new_live[i]) >= beam:
                    break
                kind, value = (VOCAB, a) if a < V else (ITEM, a - V) if a < V + N else (QUESTION, a - V - N)
                if kind == VOCAB and a == ids[EOS]:
                    done[i].append((h.actions[1:], score))
                    continue
                new_live[i].append(_advance(h, kind, value, score, itos, items[i] if items else None))
        for i in range(B):  # stop an example once its best finished beats every live prefix
            if done[i] and len(done[i]) >= beam and max(s for _, s in done[i]) >= max((h.score for h in new_live[i]), default=-np.inf):
                new_live[i] = []
        live = new_live
    for i in range(B):  # only finished hypotheses: a cut-off one renders as broken SQL
        done[i].sort(key=lambda c: -c[1])
        done[i] = done[i][:beam]
    return done
