"""The SQL role of every token of a query: which clause a keyword belongs to, table, column,
alias, value, operator, punctuation; and whether the token names something in the schema.

    roles = sql_token_roles("SELECT name FROM singer WHERE age > 30", schema)
    pieces = piece_roles(tokenizer, sql, schema)   # one PieceRole per decoder token of the SQL

The SQL is split with sqlglot's tokenizer (SQLite dialect); a small left-to-right pass assigns
clauses (a stack of them for parenthesised sub-queries) and tells names apart with the schema
when one is given. Decoder pieces are mapped to character spans of the SQL text and take the
role of the sqlglot token under their first non-blank character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

# The role vocabulary, in the order tables and heatmaps show it.
KEYWORD_ROLES = ("kw_select", "kw_from", "kw_where", "kw_group_by", "kw_having", "kw_order_by",
                 "kw_limit", "kw_set_op")
ROLES = KEYWORD_ROLES + ("function", "table", "alias", "column", "value", "operator", "punctuation", "space")
ROLE_INDEX = {r: i for i, r in enumerate(ROLES)}

_ALIAS_NAME = re.compile(r"^t\d+$", re.IGNORECASE)  # Spider's T1, T2 ...
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _types():
    from sqlglot.tokens import TokenType as T

    clause = {T.SELECT: "kw_select", T.FROM: "kw_from", T.JOIN: "kw_from", T.WHERE: "kw_where",
              T.GROUP_BY: "kw_group_by", T.HAVING: "kw_having", T.ORDER_BY: "kw_order_by",
              T.LIMIT: "kw_limit", T.OFFSET: "kw_limit", T.UNION: "kw_set_op", T.INTERSECT: "kw_set_op",
              T.EXCEPT: "kw_set_op"}
    operators = {T.EQ, T.NEQ, T.GT, T.GTE, T.LT, T.LTE, T.PLUS, T.DASH, T.SLASH, T.MOD, T.AND, T.OR,
                 T.NOT, T.IN, T.LIKE, T.ILIKE, T.GLOB, T.BETWEEN, T.IS, T.EXISTS, T.DPIPE, T.NULLSAFE_EQ}
    punctuation = {T.L_PAREN, T.R_PAREN, T.COMMA, T.DOT, T.SEMICOLON}
    values = {T.STRING, T.NUMBER, T.NULL, T.TRUE, T.FALSE}
    names = {T.VAR, T.IDENTIFIER}
    return T, clause, operators, punctuation, values, names


@dataclass
class TokenRole:
    """One sqlglot token of the SQL with its role; ``start``/``end`` are character offsets
    (``end`` exclusive)."""

    text: str
    start: int
    end: int
    role: str
    copied: bool  # names a table or column of the schema


@dataclass
class PieceRole:
    """One decoder token (piece) of the SQL."""

    token_id: int
    piece: str
    start: int  # character span of the piece in the SQL text (end exclusive)
    end: int
    role: str
    copied: bool


def schema_names(schema: Any) -> tuple[set[str], set[str]]:
    """Lower-cased (table names, column names) of a :class:`~vantage_core.sql.schema.Schema`
    (empty sets for ``None``)."""
    if schema is None:
        return set(), set()
    tables = {t.name.lower() for t in schema.tables}
    columns = {c.name.lower() for t in schema.tables for c in t.columns}
    return tables, columns


def sql_token_roles(sql: str, schema: Any = None) -> list[TokenRole]:
    """The role of each sqlglot token of ``sql``. A query sqlglot cannot tokenize gives ``[]``."""
    from sqlglot.dialects.sqlite import SQLite

    T, clause_of, operators, punctuation, values, names = _types()
    try:
        tokens = SQLite().tokenize(sql)
    except Exception:  # sqlglot raises its own TokenError on e.g. an unterminated string
        return []
    tables, columns = schema_names(schema)
    # Aliases may be used before they are declared (SELECT T1.x FROM t AS T1): collect them first.
    aliases = {tokens[i + 1].text.lower() for i, t in enumerate(tokens[:-1]) if t.token_type == T.ALIAS}

    out: list[TokenRole] = []
    clause = "kw_select"
    stack: list[str] = []
    for i, tok in enumerate(tokens):
        tt, text, low = tok.token_type, tok.text, tok.text.lower()
        prev = tokens[i - 1] if i > 0 else None
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        structural = tt in clause_of or tt in operators or tt in punctuation or tt in values
        # A keyword-typed token that is spelled like a name and sits next to a dot, or matches a
        # schema name, is a name (columns called "year", "date", "name" ...).
        looks_like_name = tt in names or (not structural and tt != T.STAR and _NAME.match(text) and (
            low in tables or low in columns or (nxt is not None and nxt.token_type == T.DOT)
            or (prev is not None and prev.token_type == T.DOT)))
        if tt in clause_of:
            clause = clause_of[tt]
            role = clause
        elif tt == T.L_PAREN:
            stack.append(clause)
            role = "punctuation"
        elif tt == T.R_PAREN:
            clause = stack.pop() if stack else clause
            role = "punctuation"
        elif tt in punctuation:
            role = "punctuation"
        elif tt in values:
            role = "value"
        elif tt in operators:
            role = "operator"
        elif tt == T.STAR:
            # `*` alone or in count(*) stands for columns; between operands it multiplies.
            after_operand = prev is not None and prev.token_type in (names | values | {T.R_PAREN})
            role = "operator" if after_operand else "column"
        elif looks_like_name:
            if nxt is not None and nxt.token_type == T.L_PAREN and low not in tables and low not in columns:
                role = "function"
            elif prev is not None and prev.token_type == T.ALIAS:
                role = "alias"
            elif nxt is not None and nxt.token_type == T.DOT:
                role = "alias" if (low in aliases or _ALIAS_NAME.match(text)) and low not in tables else "table"
            elif clause == "kw_from" and prev is not None and prev.token_type in (T.FROM, T.JOIN, T.COMMA):
                role = "table"
            elif low in aliases and low not in columns:
                role = "alias"
            elif low in tables and low not in columns:
                role = "table"
            elif tt == T.IDENTIFIER and low not in columns and low not in tables:
                role = "value"  # Spider writes string values in double quotes
            else:
                role = "column"
        elif nxt is not None and nxt.token_type == T.L_PAREN:
            role = "function"  # COUNT, MAX, CAST ... when sqlglot types them as keywords
        else:
            role = clause  # DISTINCT, AS, ON, ASC, DESC, BY ...: a keyword of the current clause
        copied = role in ("table", "column") and (low in tables or low in columns)
        out.append(TokenRole(text, tok.start, tok.end + 1, role, copied))
    return out


_BYTE_PIECE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


def piece_spans(tokenizer: Any, text: str, ids: Sequence[int] | None = None) -> list[tuple[int, int, int, str]]:
    """``(token_id, start, end, piece)`` per decoder token of ``text`` (character offsets, end
    exclusive), for ``ids`` (default ``tokenizer.encode(text)``, which they must be a prefix of).

    With a SentencePiece tokenizer the pieces are walked along the text (``▁`` is a space, the
    leading one may be the dummy prefix, ``<0xNN>`` byte pieces build up one character: the
    last of them gets the character's span, the others an empty one). Other tokenizers get
    spans from decoding growing prefixes (right whenever a decoded prefix is a prefix of the
    text).
    """
    ids = list(tokenizer.encode(text) if ids is None else ids)
    id_to_piece = getattr(tokenizer, "id_to_piece", None)
    if id_to_piece is not None:
        spans, pos, pending = [], 0, b""
        for n, tid in enumerate(ids):
            piece = id_to_piece(tid)
            byte = _BYTE_PIECE.match(piece)
            if byte:
                pending += bytes([int(byte.group(1), 16)])
                try:
                    char = pending.decode("utf-8")
                except UnicodeDecodeError:  # a character's first bytes: wait for the rest
                    spans.append((tid, pos, pos, piece))
                    continue
                pending = b""
                spans.append((tid, pos, pos + len(char), piece))
                pos += len(char)
                continue
            surface = piece.replace("\u2581", " ")
            if n == 0 and surface.startswith(" ") and not text.startswith(" "):
                surface = surface[1:]  # SentencePiece's dummy prefix: no character of the text
            if text[pos:pos + len(surface)] != surface:
                raise ValueError(f"piece {piece!r} does not match the SQL at character {pos}: {text[pos:pos + 20]!r}")
            spans.append((tid, pos, pos + len(surface), piece))
            pos += len(surface)
        return spans
    spans, prev_len = [], 0
    for i, tid in enumerate(ids):
        cur = tokenizer.decode(ids[:i + 1])
        end = len(cur) if text.startswith(cur) and len(cur) >= prev_len else prev_len
        spans.append((tid, prev_len, end, tokenizer.decode([tid])))
        prev_len = end
    return spans


def piece_roles(tokenizer: Any, sql: str, schema: Any = None, ids: Sequence[int] | None = None) -> list[PieceRole]:
    """The role of every decoder token of ``sql`` (as ``tokenizer.encode(sql)`` splits it).

    A piece takes the role of the sqlglot token under its first non-blank character; a piece
    that is only blank (SentencePiece's lone "▁") is ``space``.
    """
    roles = sql_token_roles(sql, schema)
    role_at: list[TokenRole | None] = [None] * (len(sql) + 1)
    for r in roles:
        for c in range(r.start, min(r.end, len(sql))):
            role_at[c] = r
    out = []
    for tid, start, end, piece in piece_spans(tokenizer, sql, ids):
        blank = not piece.replace("\u2581", "").strip()
        hit = None
        if not blank:
            # Byte-fallback pieces may have an empty span: look at the character they start.
            for c in range(start, max(end, start + 1)):
                if c < len(sql) and not sql[c].isspace() and role_at[c] is not None:
                    hit = role_at[c]
                    break
        if hit is None:
            out.append(PieceRole(tid, piece, start, end, "space", False))
        else:
            out.append(PieceRole(tid, piece, start, end, hit.role, hit.copied))
    return out


_ACTION_CLAUSES = {"select": "kw_select", "from": "kw_from", "join": "kw_from", "where": "kw_where",
                   "group": "kw_group_by", "having": "kw_having", "order": "kw_order_by", "limit": "kw_limit",
                   "union": "kw_set_op", "intersect": "kw_set_op", "except": "kw_set_op"}
_ACTION_FUNCTIONS = {"count", "sum", "avg", "min", "max", "cast"}
_ACTION_OPERATORS = {"=", "!=", "<", ">", "<=", ">=", "and", "or", "not", "in", "like", "between", "is", "exists",
                     "+", "-", "/", "%", "||"}


def action_roles(actions: Sequence[tuple[int, Any]], items: Sequence[Any]) -> list[PieceRole]:
    """The role of each action of a pointer model's SQL (``vantage_core.data.sql_actions``:
    ``(VOCAB, token)``, ``(ITEM, index into items)``, ``(QUESTION, piece)``), tracked left to
    right like :func:`sql_token_roles`: a pointer names a table or a column of the schema
    (copied), a question piece and a literal are values."""
    from vantage_core.data.sql_actions import ITEM, QUESTION, VALUE_MARKERS

    out, clause, stack = [], "kw_select", []
    for kind, value in actions:
        if kind == ITEM:
            it = items[value]
            role, text, copied = ("table" if it.column is None else "column"), it.column or it.table, True
        elif kind == QUESTION:
            role, text, copied = "value", f"<q{value}>", False
        else:
            text, copied = str(value), False
            if text in _ACTION_CLAUSES:
                clause = role = _ACTION_CLAUSES[text]
            elif text == "(":
                stack.append(clause)
                role = "punctuation"
            elif text == ")":
                clause = stack.pop() if stack else clause
                role = "punctuation"
            elif text == ",":
                role = "punctuation"
            elif text in _ACTION_FUNCTIONS:
                role = "function"
            elif text in _ACTION_OPERATORS:
                role = "operator"
            elif text == "*":
                role = "column"
            elif text in VALUE_MARKERS or text.startswith("'") or text[:1].isdigit() or text == "<lit>":
                role = "value"
            else:
                role = clause  # distinct, by, as, on, asc, desc: a keyword of the current clause
        out.append(PieceRole(-1, text, 0, 0, role, copied))
    return out
