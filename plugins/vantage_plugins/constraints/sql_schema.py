"""Grammar- and schema-constrained decoding for SQLite queries.

The decoded text is read by an incremental lexer (words, numbers, strings, operators) whose
complete lexemes drive an Earley recognizer over a SQL grammar covering what text-to-SQL
benchmarks ask for (SELECT ... FROM ... JOIN ... WHERE ... GROUP BY ... HAVING ... ORDER BY ...
LIMIT, set operations, subqueries, aggregates, arithmetic). Identifiers are terminals restricted
to the schema: ``%table`` matches a table name, ``%column`` a column name, ``%alias`` a
``T<n>`` alias. A token is allowed when the text with it is still a prefix of a sentence of the
grammar: its complete lexemes all scan, and its last, unfinished lexeme can still become one of
the terminals the recognizer expects. End of sequence is allowed only where the text is a
complete query that SQLite prepares on an empty copy of the schema (which also checks that each
column belongs to a table in scope, something the grammar cannot see while the SELECT list comes
before its FROM: a query that names a column of a table not yet joined may go on with a JOIN).

Speed comes from sharing: recognizer states form a tree keyed by the *set of terminals* a lexeme
matches (every column name leads to the same child), the lexing of each token's text is cached,
and the mask of each (state, unfinished lexeme) is computed once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

GRAMMAR = """
query    : compound | compound order | compound limit | compound order limit
compound : select | compound setop select
setop    : UNION | UNION ALL | INTERSECT | EXCEPT
select   : SELECT DISTINCT? results FROM sources where? group? having?
results  : result | results , result
result   : * | expr
sources  : source | sources join source | sources join source ON cond
join     : JOIN | INNER JOIN | LEFT JOIN | LEFT OUTER JOIN | CROSS JOIN | ,
source   : %table | %table AS? %alias | ( query ) | ( query ) AS? %alias
where    : WHERE cond
group    : GROUP BY exprs
having   : HAVING cond
order    : ORDER BY orders
orders   : ordering | orders , ordering
ordering : expr | expr ASC | expr DESC
limit    : LIMIT %number | LIMIT %number OFFSET %number
exprs    : expr | exprs , expr
cond     : conj | cond OR conj
conj     : neg | conj AND neg
neg      : pred | NOT neg
pred     : expr cmp expr | expr NOT? LIKE expr | expr NOT? IN ( query ) | expr NOT? IN ( values ) \
         | expr NOT? BETWEEN expr AND expr | expr IS NOT? NULL | ( cond ) | EXISTS ( query )
cmp      : = | != | <> | < | > | <= | >=
values   : literal | values , literal
expr     : term | expr + term | expr - term | expr || term
term     : factor | term * factor | term / factor
factor   : column | literal | agg ( DISTINCT? expr ) | COUNT ( * ) | ( expr ) | ( query ) | - factor \
         | func ( exprs )
column   : %column | qual . %column | qual . *
qual     : %table | %alias
literal  : %number | %string | NULL
agg      : COUNT | SUM | AVG | MIN | MAX
func     : ABS | LOWER | UPPER | LENGTH | ROUND | SUBSTR | COALESCE | IFNULL | STRFTIME | INSTR
"""
START = "query"
OPERATORS = ("=", "!=", "<>", "<", ">", "<=", ">=", "+", "-", "*", "/", "(", ")", ",", ".", "||")
OP_PREFIXES = {op[:i] for op in OPERATORS for i in range(1, len(op) + 1)}
WORD_START = re.compile(r"[A-Za-z_]")
WORD_CHAR = re.compile(r"[A-Za-z0-9_]")
ALIAS = re.compile(r"t\d+", re.IGNORECASE)
ALIAS_PREFIX = re.compile(r"t\d*", re.IGNORECASE)
SPACE = " \n"  # the blanks a query may use; tabs and other control characters are refused


def parse_grammar(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """Rules ``(lhs, rhs)``; ``X?`` is expanded into both alternatives (no empty rules)."""
    rules = []
    for line in text.replace("\\\n", " ").strip().splitlines():
        lhs, _, alternatives = line.partition(":")
        for alt in alternatives.split(" | "):
            expanded: list[tuple[str, ...]] = [()]
            for sym in alt.split():
                if sym.endswith("?") and len(sym) > 1:
                    expanded = [e + (sym[:-1],) for e in expanded] + expanded
                else:
                    expanded = [e + (sym,) for e in expanded]
            rules += [(lhs.strip(), rhs) for rhs in expanded if rhs]
    return rules


class Grammar:
    def __init__(self, text: str = GRAMMAR, start: str = START):
        self.rules = parse_grammar(text)
        self.start = start
        self.nonterminals = {lhs for lhs, _ in self.rules}
        self.by_lhs: dict[str, list[int]] = {}
        for i, (lhs, _) in enumerate(self.rules):
            self.by_lhs.setdefault(lhs, []).append(i)
        self.keywords = {s for _, rhs in self.rules for s in rhs
                         if s not in self.nonterminals and s[0].isalpha()}


Item = tuple[int, int, int]  # (rule index, dot position, origin set index)


@dataclass(eq=False)
class ChartNode:
    """The Earley sets after a sequence of lexemes; children keyed by a lexeme's terminal set."""

    sets: list[frozenset]  # every set from the start, this node's own last
    expected: frozenset  # terminals some item of the last set waits for
    complete: bool  # the lexemes so far form a whole query
    children: dict = field(default_factory=dict)
    partial_ok: dict = field(default_factory=dict)  # unfinished lexeme -> can it still scan here


def _closure(grammar: Grammar, sets: list[frozenset], seed: set[Item]) -> frozenset:
    """Predict and complete from ``seed`` into the set at index ``len(sets)``."""
    here = len(sets)
    items, todo = set(seed), list(seed)
    rules = grammar.rules
    while todo:
        rule, dot, origin = todo.pop()
        lhs, rhs = rules[rule]
        if dot < len(rhs):
            sym = rhs[dot]
            for r in grammar.by_lhs.get(sym, ()):
                new = (r, 0, here)
                if new not in items:
                    items.add(new)
                    todo.append(new)
            continue
        # Complete: advance every item of the origin set that waited for this lhs.
        source = items if origin == here else sets[origin]
        for r2, d2, o2 in list(source):
            rhs2 = rules[r2][1]
            if d2 < len(rhs2) and rhs2[d2] == lhs:
                new = (r2, d2 + 1, o2)
                if new not in items:
                    items.add(new)
                    todo.append(new)
    return frozenset(items)


def _node(grammar: Grammar, sets: list[frozenset]) -> ChartNode:
    last = sets[-1]
    expected, complete = set(), False
    for rule, dot, origin in last:
        lhs, rhs = grammar.rules[rule]
        if dot < len(rhs):
            if rhs[dot] not in grammar.nonterminals:
                expected.add(rhs[dot])
        elif lhs == grammar.start and origin == 0:
            complete = True
    return ChartNode(sets, frozenset(expected), complete)


class SQLRecognizer:
    """Prefix recognition of the SQL grammar with identifiers restricted to one schema."""

    def __init__(self, tables: Sequence[str], columns: Sequence[str], grammar: Grammar | None = None):
        self.grammar = grammar or Grammar()
        self.tables = {t.lower() for t in tables}
        self.columns = {c.lower() for c in columns}
        self.table_prefixes = {t[:i] for t in self.tables for i in range(1, len(t) + 1)}
        self.column_prefixes = {c[:i] for c in self.columns for i in range(1, len(c) + 1)}
        seed = {(r, 0, 0) for r in self.grammar.by_lhs[self.grammar.start]}
        self.root = _node(self.grammar, [_closure(self.grammar, [], seed)])

    # --------------------------------------------------------------- lexemes -> terminals
    def terminals(self, kind: str, text: str) -> frozenset:
        """The grammar terminals a complete lexeme can be."""
        if kind == "num":
            return frozenset({"%number"})
        if kind == "str":
            return frozenset({"%string"})
        if kind == "op":
            return frozenset({text}) if text in OPERATORS else frozenset()
        low, up = text.lower(), text.upper()
        out = set()
        if up in self.grammar.keywords:
            out.add(up)
        if low in self.tables:
            out.add("%table")
        if low in self.columns:
            out.add("%column")
        if ALIAS.fullmatch(text):
            out.add("%alias")
        return frozenset(out)

    def scan(self, node: ChartNode, terms: frozenset) -> ChartNode | None:
        """The node after a lexeme matching ``terms``; None where the grammar has no room for it."""
        if terms in node.children:
            return node.children[terms]
        child = None
        if terms & node.expected:
            rules = self.grammar.rules
            seed = {(r, d + 1, o) for r, d, o in node.sets[-1]
                    if d < len(rules[r][1]) and rules[r][1][d] in terms}
            child = _node(self.grammar, node.sets + [_closure(self.grammar, node.sets, seed)])
        node.children[terms] = child
        return child

    def can_continue(self, node: ChartNode, kind: str, text: str) -> bool:
        """Whether an unfinished lexeme can still grow into a terminal ``node`` expects."""
        key = (kind, text)
        hit = node.partial_ok.get(key)
        if hit is not None:
            return hit
        exp = node.expected
        if kind == "num":
            ok = "%number" in exp
        elif kind == "str":
            ok = "%string" in exp
        elif kind == "op":
            ok = any(t.startswith(text) for t in exp if t in OPERATORS)
        else:
            low, up = text.lower(), text.upper()
            ok = (any(k.startswith(up) for k in exp if k in self.grammar.keywords)
                  or ("%table" in exp and low in self.table_prefixes)
                  or ("%column" in exp and low in self.column_prefixes)
                  or ("%alias" in exp and ALIAS_PREFIX.fullmatch(text) is not None))
        node.partial_ok[key] = ok
        return ok


def lex(text: str) -> tuple[list[tuple[str, str]], str, str] | None:
    """Split ``text`` into complete lexemes and the unfinished last one.

    Returns ``(lexemes, pending_kind, pending_text)`` where a lexeme is ``(kind, text)`` with
    kind word | num | str | op; ``pending_text`` is ``""`` when the text ends on a boundary.
    None where the text cannot be SQL at all (a stray character, ``1a``).
    """
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in SPACE:
            if i > 0 and text[i - 1] in SPACE:
                return None  # one space between lexemes: runs of blanks only waste steps
            i += 1
            continue
        start = i
        if WORD_START.match(c):
            while i < n and WORD_CHAR.match(text[i]):
                i += 1
            kind = "word"
        elif c.isdigit():
            while i < n and text[i].isdigit():
                i += 1
            if i < n and text[i] == "." and (i + 1 == n or text[i + 1].isdigit()):
                i += 1
                while i < n and text[i].isdigit():
                    i += 1
            if i < n and WORD_CHAR.match(text[i]):
                return None
            kind = "num"
        elif c in "'\"":
            i += 1
            while True:
                j = text.find(c, i)
                if j < 0:
                    return out, "str", text[start:]  # still open
                if j + 1 < n and text[j + 1] == c:  # a doubled quote escapes it
                    i = j + 2
                    continue
                i = j + 1
                break
            if i == n:
                return out, "str", text[start:]  # closed, but a doubled quote could still follow
            kind = "str"
        elif c in OP_PREFIXES:
            while i < n and text[start:i + 1] in OP_PREFIXES:
                i += 1
            kind = "op"
        else:
            return None
        if i == n:
            return out, kind, text[start:]
        out.append((kind, text[start:i]))
    return out, "", ""


def _string_closed(text: str) -> bool:
    """Whether a pending string lexeme ends with its closing quote."""
    q = text[0]
    body = text[1:]
    # Pairs of quotes are escapes; an odd run at the end closes the string.
    run = len(body) - len(body.rstrip(q))
    return len(body) > 0 and run % 2 == 1


class SQLSchemaProcessor:
    """A logits processor for one schema and one tokenizer (see the module docstring)."""

    def __init__(self, schema: Any, surfaces: Sequence[str], eos_id: int, banned: Sequence[int] = ()):
        tables = [t.name for t in schema.tables]
        columns = [c.name for t in schema.tables for c in t.columns]
        self.recognizer = SQLRecognizer(tables, columns)
        self.surfaces = list(surfaces)
        self.eos_id = eos_id
        self.vocab_size = len(surfaces)
        control = {i for i, p in enumerate(self.surfaces) if any(ord(ch) < 32 and ch != "\n" for ch in p)}
        self.banned = set(banned) | {eos_id} | control
        # generated ids -> (recognizer node, unfinished lexeme's kind and text, ends on a blank)
        self.states: dict[tuple[int, ...], tuple[ChartNode, str, str, bool] | None] = {}
        self.reset()
        self.lexed: dict[str, Any] = {}
        self.masks: dict[tuple[int, str], np.ndarray] = {}
        self.forced_stops = 0  # times nothing could continue and EOS was forced
        self.schema = schema
        self.prepared: dict[str, bool] = {}

    def reset(self) -> None:
        """Forget the decoding states of the last request (the recognizer's caches stay)."""
        self.states = {(): (self.recognizer.root, "", "", False)}

    # --------------------------------------------------------------- state of a text
    def _lexed(self, text: str):
        hit = self.lexed.get(text, 0)
        if hit == 0:
            res = lex(text)
            if res is not None:
                lexemes, kind, pending = res
                terms = tuple(self.recognizer.terminals(k, t) for k, t in lexemes)
                res = None if any(not t for t in terms) else (terms, kind, pending)
            self.lexed[text] = hit = res
        return hit

    def _advance(self, node: ChartNode, pending: str, piece: str, blank: bool):
        """The state after appending ``piece`` to a text in state ``(node, pending, blank)``."""
        if not piece:
            return None
        in_string = bool(pending) and pending[0] in "'\"" and not _string_closed(pending)
        if blank and piece[0] in SPACE and not in_string:
            return None  # one blank between lexemes
        if pending and piece[0] in SPACE and not (pending[0] in "'\"" and not _string_closed(pending)):
            node = self._finish(node, pending)
            if node is None:
                return None
            pending = ""
        res = self._lexed(pending + piece)
        if res is None:
            return None
        terms, kind, rest = res
        for t in terms:
            node = self.recognizer.scan(node, t)
            if node is None:
                return None
        if rest and not self.recognizer.can_continue(node, kind, rest):
            return None
        return node, kind, rest, piece[-1] in SPACE

    def _finish(self, node: ChartNode, pending: str) -> ChartNode | None:
        """Scan an unfinished lexeme as complete (the text ends or a space follows)."""
        res = self._lexed(pending + " ")
        if res is None or res[2]:
            return None  # still open (a string) or not a lexeme
        for t in res[0]:
            node = self.recognizer.scan(node, t)
            if node is None:
                return None
        return node

    def state(self, ids: Sequence[int]) -> tuple[ChartNode, str, str] | None:
        key = tuple(ids)
        if key in self.states:
            return self.states[key]
        prev = self.state(key[:-1])
        st = None if prev is None or key[-1] >= self.vocab_size else \
            self._advance(prev[0], prev[2], self.surfaces[key[-1]], prev[3])
        self.states[key] = st
        return st

    def is_complete(self, ids: Sequence[int]) -> bool:
        """Whether the text of ``ids`` is a whole query of the grammar."""
        st = self.state(ids)
        if st is None:
            return False
        node, _, pending, _ = st
        if pending:
            node = self._finish(node, pending)
        return node is not None and node.complete

    def allowed(self, ids: Sequence[int]) -> np.ndarray:
        """(V,) bool: the tokens that keep the text a valid prefix (EOS where it is complete)."""
        st = self.state(ids)
        if st is None:
            mask = np.zeros(self.vocab_size, bool)
            mask[self.eos_id] = True
            return mask
        node, _, pending, blank = st
        key = (id(node), pending, blank)
        mask = self.masks.get(key)
        if mask is None:
            mask = np.zeros(self.vocab_size, bool)
            for i, piece in enumerate(self.surfaces):
                if i not in self.banned and self._advance(node, pending, piece, blank) is not None:
                    mask[i] = True
            self.masks[key] = mask
        # EOS is decided per text, not per node: every table name leads to the same node, but
        # only some of them hold the columns named before.
        if self.is_complete(ids) and self._prepares(ids):
            mask = mask.copy()
            mask[self.eos_id] = True
        elif not mask.any():
            self.forced_stops += 1
            mask = mask.copy()
            mask[self.eos_id] = True
        return mask

    def finalize(self, ids: Sequence[int]) -> list[int] | None:
        """The longest prefix of ``ids`` that is a whole query SQLite accepts on the schema, or
        None when there is none.

        Decoding calls this on every output: one cut at ``max_new_tokens``, or stopped where no
        token could continue, is cut back to its last valid query, so that what the constraint
        lets through parses and names only schema items.
        """
        for end in range(len(ids), 0, -1):
            prefix = list(ids[:end])
            if self.is_complete(prefix) and self._prepares(prefix):
                return prefix
        return None

    def _prepares(self, ids: Sequence[int]) -> bool:
        from vantage_core.api import sqlite_prepare_error

        text = "".join(self.surfaces[i] for i in ids)
        hit = self.prepared.get(text)
        if hit is None:
            hit = self.prepared[text] = sqlite_prepare_error(text, self.schema) is None
        return hit

    def __call__(self, generated: Sequence[Sequence[int]], logits):
        from vantage_core.api import apply_mask

        allowed = np.stack([self.allowed(g) for g in generated])
        return apply_mask(logits, allowed)


class SQLSchemaConstraint:
    """Only tokens that keep the output a valid prefix of a SQLite query naming schema items."""

    targets = ("tokens",)  # masks SQL text tokens, not a pointer model's actions

    def __init__(self, max_cached_schemas: int = 16):
        self.max_cached_schemas = max_cached_schemas
        self._surfaces: dict[int, list[str]] = {}
        self._bound: dict[tuple, SQLSchemaProcessor] = {}

    def bind(self, schema: Any, tokenizer: Any, eos_id: int, features: dict | None = None) -> SQLSchemaProcessor:
        from vantage_core.api import token_surfaces

        vocab = int(tokenizer.vocab_size)
        key_tok = id(tokenizer)
        if key_tok not in self._surfaces:
            self._surfaces[key_tok] = token_surfaces(tokenizer, vocab)
        key = (key_tok, tuple((t.name, tuple(c.name for c in t.columns)) for t in schema.tables))
        proc = self._bound.get(key)
        if proc is None:
            banned = [i for i in (getattr(tokenizer, a, None) for a in ("pad_id", "bos_id", "unk_id"))
                      if isinstance(i, int) and 0 <= i < vocab]
            banned += list(getattr(tokenizer, "special_ids", ()) or ())
            proc = SQLSchemaProcessor(schema, self._surfaces[key_tok], eos_id, banned)
            if len(self._bound) >= self.max_cached_schemas:
                self._bound.pop(next(iter(self._bound)))
            self._bound[key] = proc
        # Decoding state is per request; the recognizer's caches are kept across requests.
        proc.reset()
        return proc
