"""SQL as a sequence of pointer actions, and back.

A query becomes a list of ``(kind, value)`` actions: ``(VOCAB, token)`` for SQL keywords,
operators and rare literals, ``(ITEM, i)`` for the ``i``-th schema item of the database (see
:func:`vantage_core.data.linking.schema_items`), ``(QUESTION, piece)`` for the first and last
question piece of a value copied after a ``<val>``, ``<likeval>`` or ``<num>`` marker.
Aliases are resolved (``T1.name`` -> ``singer.name``) and every query block is written FROM
first (:func:`reorder`), so a left-to-right decoder names a block's tables before their columns.
:func:`encode_sql` raises :class:`SQLCodecError` for what it cannot express (self-joins).
"""

from __future__ import annotations

import re

from vantage_core.data.linking import SchemaItem
from vantage_core.sql.names import sql_name

VOCAB, ITEM, QUESTION = 0, 1, 2
PAD, BOS, EOS, VAL, LIKEVAL, NUM, UNK_LIT = "<pad>", "<s>", "</s>", "<val>", "<likeval>", "<num>", "<lit>"
SPECIALS = [PAD, BOS, EOS, VAL, LIKEVAL, NUM, UNK_LIT]
VALUE_MARKERS = (VAL, LIKEVAL, NUM)
KEYWORDS = frozenset(
    "select from where group by order having limit join on as and or not in like between is null distinct "
    "count sum avg min max asc desc union intersect except exists inner left outer cross natural case when "
    "then else end cast all".split())
MAX_SPAN = 16  # longest copied value, in question word pieces

_SQL_TOKEN = re.compile(r"""\s*(?:('(?:[^']|'')*')|("[^"]*")|(\d+(?:\.\d+)?)|"""
                        r"""([A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\*))?)|"""
                        r"""(>=|<=|!=|<>|==|\|\||[(),*=<>+\-/%;.]))""")


class SQLCodecError(ValueError):
    """Gold SQL this codec cannot express (self-joins, conflicting aliases, unknown names)."""


def sql_tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) tokens: kind in str, num, ident, op."""
    out, pos, sql = [], 0, sql.strip().rstrip(";")
    while pos < len(sql):
        m = _SQL_TOKEN.match(sql, pos)
        if not m or m.end() == pos:
            if sql[pos:].strip() == "":
                break
            raise SQLCodecError(f"cannot tokenize at {sql[pos:pos + 20]!r}")
        pos = m.end()
        s1, s2, num, ident, op = m.groups()
        if s1 is not None:
            out.append(("str", s1[1:-1].replace("''", "'")))
        elif s2 is not None:
            out.append(("str", s2[1:-1]))
        elif num is not None:
            out.append(("num", num))
        elif ident is not None:
            out.append(("ident", ident))
        elif op is not None:
            out.append(("op", op))
    return out


def find_span(value: str, question: str, offsets: list[tuple[int, int]], copyable: list[bool]) -> tuple[int, int] | None:
    """Word-piece span (start, end inclusive) whose text is ``value`` (case-insensitively)."""
    if not value:
        return None
    low, v = question.lower(), value.lower()
    starts = {o[0]: i for i, o in enumerate(offsets) if copyable[i]}
    ends = {o[1]: i for i, o in enumerate(offsets) if copyable[i]}
    p = low.find(v)
    while p >= 0:
        if p in starts and p + len(v) in ends and ends[p + len(v)] - starts[p] < MAX_SPAN:
            return starts[p], ends[p + len(v)]
        p = low.find(v, p + 1)
    return None


def _query_blocks(toks: list[tuple[str, str]]) -> list[int]:
    """The query block (top level, each ``( SELECT ...)`` subquery, each side of a set
    operation) every token belongs to, so a bare column resolves among its own block's tables."""
    out, stack, depth_of, fresh = [], [0], [], 1
    for i, (kind, text) in enumerate(toks):
        low = text.lower()
        if text == "(" and i + 1 < len(toks) and toks[i + 1][1].lower() == "select":
            stack.append(fresh)
            depth_of.append(True)
            fresh += 1
        elif text == "(":
            depth_of.append(False)
        elif text == ")" and depth_of:
            if depth_of.pop():
                out.append(stack.pop())
                continue
        elif low in ("union", "intersect", "except"):
            stack[-1] = fresh
            fresh += 1
        out.append(stack[-1])
    return out


def encode_sql(sql: str, items: list[SchemaItem], question: str, offsets, copyable) -> list[tuple[int, object]]:
    """Gold SQL -> actions ``(VOCAB, token) | (ITEM, index) | (QUESTION, piece)``; raises
    :class:`SQLCodecError` for queries the codec cannot express."""
    toks = sql_tokens(sql)
    tables = {it.table.lower(): i for i, it in enumerate(items) if it.column is None}
    columns = {(it.table.lower(), it.column.lower()): i for i, it in enumerate(items) if it.column is not None}
    alias, drop = {}, set()
    for i, (kind, text) in enumerate(toks):
        if kind == "ident" and text.lower() in tables and i + 1 < len(toks):
            j = i + 1
            if toks[j] == ("ident", toks[j][1]) and toks[j][1].lower() == "as" and j + 1 < len(toks):
                j += 1
            name = toks[j][1].lower()
            if toks[j][0] == "ident" and name not in KEYWORDS and name not in tables and (j > i + 1 or re.fullmatch(r"t\d+", name)):
                if alias.get(name, text.lower()) != text.lower():
                    raise SQLCodecError(f"alias {name} names two tables")
                alias[name] = text.lower()
                drop.update(range(i + 1, j + 1))
    if len(set(alias.values())) < len(alias):
        raise SQLCodecError("self-join (one table under two aliases)")
    from_tables = [t.lower() for k, t in toks if k == "ident" and t.lower() in tables]
    blocks = _query_blocks(toks)
    block_tables: dict[int, list[str]] = {}
    for (k, t), blk in zip(toks, blocks):
        if k == "ident" and t.lower() in tables:
            block_tables.setdefault(blk, []).append(t.lower())
    actions: list[tuple[int, object]] = []
    for i, (kind, text) in enumerate(toks):
        if i in drop:
            continue
        low = text.lower()
        if kind in ("str", "num"):
            core, marker = text, (NUM if kind == "num" else VAL)
            if kind == "str" and len(text) > 1 and text.startswith("%") and text.endswith("%"):
                core, marker = text.strip("%"), LIKEVAL
            span = find_span(core, question, offsets, copyable)
            if span is not None:
                actions += [(VOCAB, marker), (QUESTION, span[0]), (QUESTION, span[1])]
            else:
                actions.append((VOCAB, ("'" + text.replace("'", "''") + "'") if kind == "str" else text))
        elif kind == "ident" and "." in text:
            left, right = low.split(".", 1)
            table = alias.get(left, left)
            if right == "*" or (table, right) not in columns:
                raise SQLCodecError(f"unknown column {text}")
            actions.append((ITEM, columns[(table, right)]))
        elif kind == "ident" and low in KEYWORDS:
            actions.append((VOCAB, low))
        elif kind == "ident":
            prev = toks[i - 1][1].lower() if i else ""
            owners = [t for t in block_tables.get(blocks[i], []) if (t, low) in columns] or \
                     [t for t in from_tables if (t, low) in columns]
            if low in tables and (prev in ("from", "join", ",") and (prev != "," or not owners) or not owners):
                actions.append((ITEM, tables[low]))
            elif owners:
                actions.append((ITEM, columns[(owners[0], low)]))
            else:
                raise SQLCodecError(f"unknown name {text}")
        else:
            actions.append((VOCAB, "!=" if text == "<>" else text))
    return reorder(actions, from_first=True)


SET_OPS = ("union", "intersect", "except")
CLAUSES = ("where", "group", "having", "order", "limit")  # in the order SQL writes them


def _tok(action) -> str | None:
    return action[1] if action[0] == VOCAB else None


def reorder(actions: list, from_first: bool) -> list:
    """Move every query block's FROM clause before its SELECT (``from_first``), or back.

    With FROM first, a left-to-right decoder has named a block's tables before it names their
    columns, so decoding can allow only columns of those tables (SELECT-first SQL cannot)."""
    parts, cur, depth = [], [], 0
    for a in actions:
        t = _tok(a)
        depth += (t == "(") - (t == ")")
        if depth == 0 and t in SET_OPS:
            parts += [_reorder_side(cur, from_first), [a]]
            cur = []
        else:
            cur.append(a)
    parts.append(_reorder_side(cur, from_first))
    return [a for p in parts for a in p]


def _reorder_side(acts: list, from_first: bool) -> list:
    head = "select" if from_first else "from"
    out, i = [], 0
    while i < len(acts):  # subqueries first
        if _tok(acts[i]) == "(" and i + 1 < len(acts) and _tok(acts[i + 1]) == head:
            depth, j = 0, i
            while j < len(acts):
                depth += (_tok(acts[j]) == "(") - (_tok(acts[j]) == ")")
                if depth == 0:
                    break
                j += 1
            out += [acts[i]] + reorder(acts[i + 1:j], from_first) + acts[j:j + 1]
            i = j + 1
        else:
            out.append(acts[i])
            i += 1
    top, depth = [], 0
    for k, a in enumerate(out):  # depth-0 positions of clause keywords
        t = _tok(a)
        if depth == 0 and t in ("select", "from") + CLAUSES:
            top.append((k, t))
        depth += (t == "(") - (t == ")")
    if from_first:
        f = next((k for k, t in top if t == "from"), None)
        if f is None:
            return out
        e = next((k for k, t in top if k > f and t in CLAUSES), len(out))
        return out[f:e] + out[:f] + out[e:]
    sel = next((k for k, t in top if t == "select"), None)
    if sel is None or not top or top[0][1] != "from":
        return out
    e = next((k for k, t in top if k > sel and t in CLAUSES), len(out))
    return out[sel:e] + out[:sel] + out[e:]


def render_sql(actions: list[tuple[int, object]], items: list[SchemaItem], question: str, offsets,
               db_values: dict[str, str] | None = None) -> str:
    """Actions -> SQL text (every column as ``table.column``). ``db_values``: lower-cased cell
    value -> the value as stored, so a copied "france" is written as the database's "France"."""
    actions = reorder(list(actions), from_first=False)
    out, i = [], 0
    while i < len(actions):
        kind, val = actions[i]
        if kind == VOCAB and val in VALUE_MARKERS and i + 2 < len(actions) + 1:
            (k1, s), (k2, e) = (actions[i + 1] if i + 1 < len(actions) else (None, 0)), \
                               (actions[i + 2] if i + 2 < len(actions) else (None, 0))
            if k1 != QUESTION or k2 != QUESTION:
                out.append("''")
                i += 1
                continue
            text = question[offsets[s][0]:offsets[max(s, e)][1]]
            if val == NUM:
                out.append(text if re.fullmatch(r"-?\d+(\.\d+)?", text) else "'" + text.replace("'", "''") + "'")
            else:
                if db_values and val == VAL:
                    text = db_values.get(text.lower(), text)
                text = f"%{text}%" if val == LIKEVAL else text
                out.append("'" + text.replace("'", "''") + "'")
            i += 3
            continue
        if kind == ITEM:
            it = items[val]
            out.append(sql_name(it.table) if it.column is None else f"{sql_name(it.table)}.{sql_name(it.column)}")
        elif kind == VOCAB:
            out.append("" if val in (BOS, EOS, PAD) else (UNK_LIT if val == UNK_LIT else str(val)))
        i += 1
    return " ".join(t for t in out if t).replace(UNK_LIT, "''")
