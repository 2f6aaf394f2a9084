"""Spider's official metrics, reimplemented: exact set match (EM), hardness, execution (EX).

The reference is the official evaluator (taoyds/test-suite-sql-eval, ``--etype all``, default
flags); ``benchmarks/spider_agreement.py`` measures agreement with its own verdicts. Two modes:

``compat`` (the default) reproduces the official behaviour, quirks included, so that numbers are
comparable with published ones:

- the prediction is cut at its first tab and every ``value`` in it becomes ``1`` (so a column
  called ``market_value`` breaks a correct prediction);
- the official tokenizer (NLTK's Treebank rules) and parser: ``<>``, ``a=b`` without spaces,
  ``NOT x IN``, ``LEFT JOIN``, ``IN (1, 2)``, select aliases and comma joins are rejected, and a
  rejected prediction is compared as an empty query (EM 0) though it is still executed; trailing
  tokens after a parsed query are ignored;
- EM ignores values (except in a subquery in FROM), LIMIT's number, JOIN ... ON conditions and
  DISTINCT; columns joined by a foreign key count as one; GROUP BY compares column names only;
- EX strips DISTINCT from both queries (via sqlparse, which also keeps only the first
  statement), treats row order as significant when the gold text contains ``order by``, and
  never counts column order.

``corrected`` fixes what is plainly wrong, each deviation on its own:

- no ``value`` -> ``1`` rewrite and no cut at a tab;
- operators are split whatever the spacing (``a=b``, ``a>=b``) and ``<>`` means ``!=``;
- ``IN (v1, v2, ...)`` lists and ``LEFT``/``INNER``/``CROSS JOIN`` parse (the join kind is
  not compared, like the ON condition);
- tokens left over after the query make it a parse failure;
- EM compares DISTINCT and LIMIT's number;
- EX keeps DISTINCT, and row order counts only when the gold has ``ORDER BY`` outside a
  subquery (any spacing).
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections import Counter
from itertools import product
from typing import Any, Iterable

from vantage_core.sql.schema import Schema
from vantage_core.sql.names import quoted
from vantage_core.sql.sqlite_file import readonly_uri

MODES = ("compat", "corrected")

CLAUSE_KEYWORDS = ("select", "from", "where", "group", "order", "limit", "intersect", "union", "except")
JOIN_KEYWORDS = ("join", "on", "as")
WHERE_OPS = ("not", "between", "=", ">", "<", ">=", "<=", "!=", "in", "like", "is", "exists")
UNIT_OPS = ("none", "-", "+", "*", "/")
AGG_OPS = ("none", "max", "min", "count", "sum", "avg")
SQL_OPS = ("intersect", "union", "except")
ORDER_OPS = ("desc", "asc")
HARDNESS = ("easy", "medium", "hard", "extra")


class SpiderParseError(ValueError):
    """The official parser would reject this query."""


# ---------------------------------------------------------------------------------------------
# Tokenizer: the official one quotes-out string values, then applies NLTK's word_tokenize.
# These are the Treebank rules that can fire on SQL once strings are replaced by placeholders.
_TREEBANK_RULES = [
    (re.compile(r"([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),
    (re.compile(r"--"), r" -- "),
]
_CONTRACTIONS = [re.compile(p) for p in (
    r"(?i)\b(can)(?#X)(not)\b", r"(?i)\b(d)(?#X)('ye)\b", r"(?i)\b(gim)(?#X)(me)\b",
    r"(?i)\b(gon)(?#X)(na)\b", r"(?i)\b(got)(?#X)(ta)\b", r"(?i)\b(lem)(?#X)(me)\b",
    r"(?i)\b(more)(?#X)('n)\b", r"(?i)\b(wan)(?#X)(na)(?=\s)")]
# corrected mode: operators and punctuation become tokens whatever the spacing
_SQL_TOKEN = re.compile(r"__val_\d+_\d+__|<>|!=|>=|<=|[=<>!(),;*+/-]|[^\s=<>!(),;*+/-]+")


def _treebank_split(text: str) -> list[str]:
    for pattern, repl in _TREEBANK_RULES:
        text = pattern.sub(repl, text)
    text = " " + text + " "
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


def tokenize(query: str, mode: str = "compat") -> list[str]:
    """Lower-cased tokens; a quoted string stays one token, quotes included (as ``"..."``)."""
    text = str(query).replace("'", '"')
    quotes = [i for i, ch in enumerate(text) if ch == '"']
    if len(quotes) % 2:
        raise SpiderParseError("unbalanced quote")
    values = {}
    for i in range(len(quotes) - 1, -1, -2):  # right to left, so earlier offsets stay valid
        a, b = quotes[i - 1], quotes[i]
        key = f"__val_{a}_{b}__"
        values[key] = text[a:b + 1]
        text = text[:a] + key + text[b + 1:]
    words = _treebank_split(text) if mode == "compat" else _SQL_TOKEN.findall(text)
    toks = [values.get(w.lower(), w.lower()) for w in words]
    # glue '!', '>' and '<' back onto a following '='
    for i in reversed([i for i, t in enumerate(toks) if t == "="]):
        if i > 0 and toks[i - 1] in ("!", ">", "<"):
            toks[i - 1: i + 1] = [toks[i - 1] + "="]
    if mode != "compat":
        toks = ["!=" if t == "<>" else t for t in toks]
    return toks


# ---------------------------------------------------------------------------------------------
# Parser: the official parse tree, as dicts and tuples so that == compares what it compares.
#   sql = {select: (distinct, [(agg, val_unit)]), from: {table_units, conds}, where, groupBy,
#          having, orderBy: [] | (asc|desc, [val_unit]), limit, intersect, union, except}
#   val_unit = (unit_op, col_unit, col_unit|None); col_unit = (agg, "__table.col__", distinct)
#   cond_unit = (not, op, val_unit, val1, val2); conditions alternate cond_unit, "and"|"or"

class DbSchema:
    """Table -> lower-cased column names, as the official evaluator reads them from SQLite."""

    def __init__(self, tables: dict[str, list[str]]):
        self.tables = tables
        self.id_map = {"*": "__all__"}
        for t, cols in tables.items():
            for c in cols:
                self.id_map[f"{t}.{c}"] = f"__{t}.{c}__"
        for t in tables:
            self.id_map[t] = f"__{t}__"

    @classmethod
    def from_sqlite(cls, db_path: str) -> "DbSchema":
        return _schema_from_sqlite(str(db_path))

    @classmethod
    def from_schema(cls, schema: Schema) -> "DbSchema":
        return cls({t.name.lower(): [c.name.lower() for c in t.columns] for t in schema.tables})


@functools.lru_cache(maxsize=256)
def _schema_from_sqlite(db_path: str) -> DbSchema:
    conn = sqlite3.connect(readonly_uri(db_path), uri=True)
    try:
        names = [r[0].lower() for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        tables = {}
        for name in names:
            tables[name] = [r[1].lower() for r in conn.execute(f"PRAGMA table_info({quoted(name)})")]
    finally:
        conn.close()
    return DbSchema(tables)


class _Parser:
    def __init__(self, toks: list[str], schema: DbSchema, mode: str):
        self.toks, self.schema, self.corrected = toks, schema, mode != "compat"
        # aliases: every "x AS y" anywhere in the query, then every table under its own name
        self.aliases = {}
        for i, t in enumerate(toks):
            if t == "as":
                self.aliases[toks[i + 1]] = toks[i - 1]
        for t in schema.tables:
            if t in self.aliases:
                raise SpiderParseError(f"alias {t} is also a table name")
            self.aliases[t] = t

    def tok(self, i: int) -> str:
        return self.toks[i]  # IndexError is a parse failure, as in the official parser

    def expect(self, cond: bool, what: str) -> None:
        if not cond:
            raise SpiderParseError(what)

    def column(self, i: int, tables: list[str] | None) -> tuple[int, str]:
        tok = self.tok(i)
        if tok == "*":
            return i + 1, self.schema.id_map["*"]
        if "." in tok:
            alias, col = tok.split(".")
            return i + 1, self.schema.id_map[self.aliases[alias] + "." + col]
        self.expect(bool(tables), "no default tables")
        for alias in tables:
            table = self.aliases[alias]
            if tok in self.schema.tables[table]:
                return i + 1, self.schema.id_map[table + "." + tok]
        raise SpiderParseError(f"unknown column {tok}")

    def col_unit(self, i: int, tables) -> tuple[int, tuple]:
        n = len(self.toks)
        block = self.tok(i) == "("
        i += block
        if self.tok(i) in AGG_OPS:
            agg = AGG_OPS.index(self.tok(i))
            i += 1
            self.expect(i < n and self.tok(i) == "(", "( after aggregate")
            i += 1
            distinct = self.tok(i) == "distinct"
            i += distinct
            i, col = self.column(i, tables)
            self.expect(i < n and self.tok(i) == ")", ") after aggregate")
            return i + 1, (agg, col, distinct)
        distinct = self.tok(i) == "distinct"
        i += distinct
        i, col = self.column(i, tables)
        if block:
            self.expect(self.tok(i) == ")", "unclosed (")
            i += 1
        return i, (AGG_OPS.index("none"), col, distinct)

    def val_unit(self, i: int, tables) -> tuple[int, tuple]:
        block = self.tok(i) == "("
        i += block
        i, unit1 = self.col_unit(i, tables)
        op, unit2 = UNIT_OPS.index("none"), None
        if i < len(self.toks) and self.tok(i) in UNIT_OPS:
            op = UNIT_OPS.index(self.tok(i))
            i, unit2 = self.col_unit(i + 1, tables)
        if block:
            self.expect(self.tok(i) == ")", "unclosed (")
            i += 1
        return i, (op, unit1, unit2)

    def table_unit(self, i: int) -> tuple[int, str, str]:
        key = self.aliases[self.tok(i)]
        i += 3 if i + 1 < len(self.toks) and self.tok(i + 1) == "as" else 1
        return i, self.schema.id_map[key], key

    def value(self, i: int, tables) -> tuple[int, Any]:
        start, n = i, len(self.toks)
        block = self.tok(i) == "("
        i += block
        tok = self.tok(i)
        if tok == "select":
            i, val = self.sql(i)
        elif '"' in tok:
            val, i = tok, i + 1
        else:
            try:
                val, i = float(tok), i + 1
            except ValueError:
                end = i
                while end < n and self.toks[end] not in (",", ")", "and") \
                        and self.toks[end] not in CLAUSE_KEYWORDS and self.toks[end] not in JOIN_KEYWORDS:
                    end += 1
                _, val = _Parser.col_unit(self._sub(start, end), 0, tables)
                i = end
        if block:
            if self.corrected and tok != "select":  # a list of values: IN (1, 2, 3)
                while i < n and self.tok(i) == ",":
                    i, _ = self.value(i + 1, tables)
            self.expect(self.tok(i) == ")", "unclosed (")
            i += 1
        return i, val

    def _sub(self, start: int, end: int) -> "_Parser":
        sub = object.__new__(_Parser)
        sub.toks, sub.schema, sub.aliases, sub.corrected = self.toks[start:end], self.schema, self.aliases, self.corrected
        return sub

    def condition(self, i: int, tables) -> tuple[int, list]:
        n, conds = len(self.toks), []
        while i < n:
            i, unit = self.val_unit(i, tables)
            negated = self.tok(i) == "not"
            i += negated
            self.expect(i < n and self.tok(i) in WHERE_OPS, f"no operator at {i}")
            op = WHERE_OPS.index(self.tok(i))
            i += 1
            val2 = None
            if op == WHERE_OPS.index("between"):
                i, val1 = self.value(i, tables)
                self.expect(self.tok(i) == "and", "BETWEEN without AND")
                i, val2 = self.value(i + 1, tables)
            else:
                i, val1 = self.value(i, tables)
            conds.append((negated, op, unit, val1, val2))
            if i < n and (self.tok(i) in CLAUSE_KEYWORDS or self.tok(i) in (")", ";") or self.tok(i) in JOIN_KEYWORDS):
                break
            if i < n and self.tok(i) in ("and", "or"):
                conds.append(self.tok(i))
                i += 1
        return i, conds

    def select(self, i: int, tables) -> tuple[int, tuple]:
        n = len(self.toks)
        self.expect(self.tok(i) == "select", "no SELECT")
        i += 1
        distinct = i < n and self.tok(i) == "distinct"
        i += distinct
        units = []
        while i < n and self.tok(i) not in CLAUSE_KEYWORDS:
            agg = AGG_OPS.index("none")
            if self.tok(i) in AGG_OPS:
                agg = AGG_OPS.index(self.tok(i))
                i += 1
            i, unit = self.val_unit(i, tables)
            units.append((agg, unit))
            if i < n and self.tok(i) == ",":
                i += 1
        return i, (distinct, units)

    def from_(self, start: int) -> tuple[int, list, list, list]:
        self.expect("from" in self.toks[start:], "no FROM")
        n = len(self.toks)
        i = self.toks.index("from", start) + 1
        tables, units, conds = [], [], []
        while i < n:
            block = self.tok(i) == "("
            i += block
            if self.tok(i) == "select":
                i, sub = self.sql(i)
                units.append(("sql", sub))
            else:
                if self.corrected and self.tok(i) in ("left", "right", "inner", "cross", "outer", "full", "natural"):
                    while self.tok(i) != "join":
                        i += 1
                if i < n and self.tok(i) == "join":
                    i += 1
                i, unit, name = self.table_unit(i)
                units.append(("table_unit", unit))
                tables.append(name)
            if i < n and self.tok(i) == "on":
                i, these = self.condition(i + 1, tables)
                if conds:
                    conds.append("and")
                conds.extend(these)
            if block:
                self.expect(self.tok(i) == ")", "unclosed (")
                i += 1
            if i < n and (self.tok(i) in CLAUSE_KEYWORDS or self.tok(i) in (")", ";")):
                break
        return i, units, conds, tables

    def sql(self, start: int) -> tuple[int, dict]:
        n, i = len(self.toks), start
        block = self.tok(i) == "("
        i += block
        from_end, units, conds, tables = self.from_(start)
        sql: dict[str, Any] = {"from": {"table_units": units, "conds": conds}}
        _, sql["select"] = self.select(i, tables)  # the official parser ignores where SELECT ends
        i = from_end
        sql["where"], i = ([], i) if not (i < n and self.tok(i) == "where") else self.condition(i + 1, tables)[::-1]
        sql["groupBy"] = []
        if i < n and self.tok(i) == "group":
            self.expect(self.tok(i + 1) == "by", "GROUP without BY")
            i += 2
            while i < n and not (self.tok(i) in CLAUSE_KEYWORDS or self.tok(i) in (")", ";")):
                i, unit = self.col_unit(i, tables)
                sql["groupBy"].append(unit)
                if i < n and self.tok(i) == ",":
                    i += 1
                else:
                    break
        sql["having"], i = ([], i) if not (i < n and self.tok(i) == "having") else self.condition(i + 1, tables)[::-1]
        sql["orderBy"] = []
        if i < n and self.tok(i) == "order":
            self.expect(self.tok(i + 1) == "by", "ORDER without BY")
            i += 2
            direction, units_ = "asc", []
            while i < n and not (self.tok(i) in CLAUSE_KEYWORDS or self.tok(i) in (")", ";")):
                i, unit = self.val_unit(i, tables)
                units_.append(unit)
                if i < n and self.tok(i) in ORDER_OPS:
                    direction = self.tok(i)
                    i += 1
                if i < n and self.tok(i) == ",":
                    i += 1
                else:
                    break
            sql["orderBy"] = (direction, units_)
        sql["limit"] = None
        if i < n and self.tok(i) == "limit":
            i += 2
            # the official parser never reads the number (its check for an int token never holds)
            sql["limit"] = 1
            if self.corrected:
                try:
                    sql["limit"] = int(self.tok(i - 1))
                except ValueError:
                    raise SpiderParseError("LIMIT without a number") from None
        while i < n and self.tok(i) == ";":
            i += 1
        if block:
            self.expect(self.tok(i) == ")", "unclosed (")
            i += 1
        while i < n and self.tok(i) == ";":
            i += 1
        for op in SQL_OPS:
            sql[op] = None
        if i < n and self.tok(i) in SQL_OPS:
            op = self.tok(i)
            i, sql[op] = self.sql(i + 1)
        return i, sql


def parse(query: str, schema: DbSchema, mode: str = "compat") -> dict:
    """The official parse tree of ``query``; raises :class:`SpiderParseError` where the
    official parser fails (any exception inside it counts as a failure, as there)."""
    try:
        toks = tokenize(query, mode)
        parser = _Parser(toks, schema, mode)
        end, sql = parser.sql(0)
    except SpiderParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - KeyError, IndexError, ... all mean "rejected"
        raise SpiderParseError(f"{type(exc).__name__}: {exc}") from None
    if mode != "compat" and end < len(toks):
        raise SpiderParseError(f"unexpected tokens after the query: {' '.join(toks[end:end + 5])}")
    return sql


def empty_sql() -> dict:
    """What the official evaluator compares a rejected prediction as."""
    return {"except": None, "from": {"conds": [], "table_units": []}, "groupBy": [], "having": [],
            "intersect": None, "limit": None, "orderBy": [], "select": (False, []), "union": None,
            "where": []}


# ---------------------------------------------------------------------------------------------
# Hardness: counts of components, with the official buckets (computed on the gold parse).

def _has_agg(unit) -> bool:
    return unit[0] != 0  # on a condition list this also counts NOT and the "and"/"or" strings


def _count_agg(units) -> int:
    return sum(1 for u in units if _has_agg(u))


def _conds(sql: dict) -> list:
    return sql["from"]["conds"][::2] + sql["where"][::2] + sql["having"][::2]


def _nested(sql: dict) -> list[dict]:
    out = [v for c in _conds(sql) for v in (c[3], c[4]) if isinstance(v, dict)]
    return out + [sql[op] for op in ("intersect", "except", "union") if sql[op] is not None]


def _component1(sql: dict) -> int:
    count = sum(bool(sql[k]) for k in ("where", "groupBy", "orderBy")) + (sql["limit"] is not None)
    if sql["from"]["table_units"]:
        count += len(sql["from"]["table_units"]) - 1
    glue = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    count += sum(1 for t in glue if t == "or")
    return count + sum(1 for c in _conds(sql) if c[1] == WHERE_OPS.index("like"))


def _others(sql: dict) -> int:
    agg = _count_agg(sql["select"][1]) + _count_agg(sql["where"][::2]) + _count_agg(sql["groupBy"])
    if sql["orderBy"]:
        units = sql["orderBy"][1]
        agg += _count_agg([u[1] for u in units if u[1]] + [u[2] for u in units if u[2]])
    agg += _count_agg(sql["having"])
    return (agg > 1) + (len(sql["select"][1]) > 1) + (len(sql["where"]) > 1) + (len(sql["groupBy"]) > 1)


def hardness(sql: dict) -> str:
    """easy / medium / hard / extra, exactly as the official evaluator buckets a gold query."""
    c1, c2, others = _component1(sql), len(_nested(sql)), _others(sql)
    if c1 <= 1 and others == 0 and c2 == 0:
        return "easy"
    if (others <= 2 and c1 <= 1 and c2 == 0) or (c1 <= 2 and others < 2 and c2 == 0):
        return "medium"
    if (others > 2 and c1 <= 2 and c2 == 0) or (2 < c1 <= 3 and others <= 2 and c2 == 0) \
            or (c1 <= 1 and others == 0 and c2 <= 1):
        return "hard"
    return "extra"


# ---------------------------------------------------------------------------------------------
# Normalization before comparison: values dropped, foreign-key columns merged, DISTINCT dropped.

def foreign_key_map(schema: Schema) -> dict[str, str]:
    """Column id -> the id standing for its foreign-key group, built as the official evaluator
    builds it from tables.json (groups grow greedily in the order the keys are listed; the
    group's lowest column index represents it)."""
    ids, index = ["__all__"], {}
    for table in schema.tables:
        for col in table.columns:
            index[(table.name.lower(), col.name.lower())] = len(ids)
            ids.append(f"__{table.name.lower()}.{col.name.lower()}__")
    groups: list[set[int]] = []
    for fk in schema.foreign_keys:
        a = index.get((fk.table.lower(), fk.column.lower()))
        b = index.get((fk.ref_table.lower(), fk.ref_column.lower()))
        if a is None or b is None:
            continue
        group = next((g for g in groups if a in g or b in g), None)
        if group is None:
            group = set()
            groups.append(group)
        group.update((a, b))
    kmap = {}
    for group in groups:
        members = sorted(group)
        for m in members:
            kmap[ids[m]] = ids[members[0]]
    return kmap


def _drop_values_conds(conds: list) -> list:
    out = []
    for k, c in enumerate(conds):
        if k % 2:
            out.append(c)
        else:
            neg, op, unit, v1, v2 = c
            out.append((neg, op, unit, _drop_values(v1) if isinstance(v1, dict) else None,
                        _drop_values(v2) if isinstance(v2, dict) else None))
    return out


def _drop_values(sql: dict | None) -> dict | None:
    if sql is None:
        return None
    sql = dict(sql, **{"from": dict(sql["from"])})
    sql["from"]["conds"] = _drop_values_conds(sql["from"]["conds"])
    sql["having"] = _drop_values_conds(sql["having"])
    sql["where"] = _drop_values_conds(sql["where"])
    for op in SQL_OPS:
        sql[op] = _drop_values(sql[op])
    return sql


class _ColumnRewriter:
    """Merges foreign-key columns of the FROM tables; drops DISTINCT flags (compat)."""

    def __init__(self, valid: set[str], kmap: dict[str, str], keep_distinct: bool):
        self.valid, self.kmap, self.keep_distinct = valid, kmap, keep_distinct

    def col(self, unit):
        if unit is None:
            return None
        agg, col, distinct = unit
        if col in self.kmap and col in self.valid:
            col = self.kmap[col]
        return agg, col, distinct if self.keep_distinct else None

    def val(self, unit):
        if unit is None:
            return None
        op, c1, c2 = unit
        return op, self.col(c1), self.col(c2)

    def conds(self, conds):
        return [c if k % 2 else (c[0], c[1], self.val(c[2]), c[3], c[4]) for k, c in enumerate(conds)]

    def sql(self, sql):
        if sql is None:
            return None
        distinct, units = sql["select"]
        out = dict(sql)
        out["select"] = (distinct if self.keep_distinct else None, [(agg, self.val(u)) for agg, u in units])
        out["from"] = {"table_units": list(sql["from"]["table_units"]), "conds": self.conds(sql["from"]["conds"])}
        out["where"] = self.conds(sql["where"])
        out["groupBy"] = [self.col(u) for u in sql["groupBy"]]
        if sql["orderBy"]:
            out["orderBy"] = (sql["orderBy"][0], [self.val(u) for u in sql["orderBy"][1]])
        out["having"] = self.conds(sql["having"])
        for op in SQL_OPS:
            out[op] = self.sql(sql[op])
        return out


def normalize(sql: dict, schema: DbSchema, kmap: dict[str, str], mode: str = "compat") -> dict:
    """Values dropped and foreign-key columns merged, ready for :func:`exact_match`."""
    tables = {u[1][:-2] for u in sql["from"]["table_units"] if u[0] == "table_unit"}
    valid = {v for v in schema.id_map.values() if "." in v and v[:v.index(".")] in tables}
    return _ColumnRewriter(valid, kmap, keep_distinct=mode != "compat").sql(_drop_values(sql))


# ---------------------------------------------------------------------------------------------
# Exact set match on normalized trees

def _all_matched(pred_units: list, gold_units: list) -> bool:
    """Same count, and each predicted unit found in (and removed from) the gold ones."""
    if len(pred_units) != len(gold_units):
        return False
    remaining = list(gold_units)
    hits = 0
    for u in pred_units:
        if u in remaining:
            hits += 1
            remaining.remove(u)
    return hits == len(pred_units)


def _keywords(sql: dict) -> set[str]:
    kw = {k for k, key in (("where", "where"), ("group", "groupBy"), ("having", "having")) if sql[key]}
    if sql["orderBy"]:
        kw |= {sql["orderBy"][0], "order"}
    if sql["limit"] is not None:
        kw.add("limit")
    kw |= {op for op in SQL_OPS if sql[op] is not None}
    glue = sql["from"]["conds"][1::2] + sql["where"][1::2] + sql["having"][1::2]
    if "or" in glue:
        kw.add("or")
    conds = _conds(sql)
    if any(c[0] for c in conds):
        kw.add("not")
    if any(c[1] == WHERE_OPS.index("in") for c in conds):
        kw.add("in")
    if any(c[1] == WHERE_OPS.index("like") for c in conds):
        kw.add("like")
    return kw


def _component_scores(pred: dict, gold: dict, mode: str) -> dict[str, bool]:
    ps, gs = pred["select"][1], gold["select"][1]
    pw, gw = pred["where"][::2], gold["where"][::2]
    pg = [u[1].split(".")[1] if "." in u[1] else u[1] for u in pred["groupBy"]]
    gg = [u[1].split(".")[1] if "." in u[1] else u[1] for u in gold["groupBy"]]
    both_group = bool(pred["groupBy"]) and bool(gold["groupBy"])
    limit_same = (pred["limit"] is None) == (gold["limit"] is None)
    if mode != "compat":
        limit_same = pred["limit"] == gold["limit"]
    nested = []
    for op in SQL_OPS:
        p, g = pred[op], gold[op]
        nested.append(p is None and g is None or (p is not None and g is not None and exact_match(p, g, mode)))
    scores = {
        "select": _all_matched(ps, gs) and (mode == "compat" or pred["select"][0] == gold["select"][0]),
        "select(no AGG)": _all_matched([u[1] for u in ps], [u[1] for u in gs]),
        "where": _all_matched(pw, gw),
        "where(no OP)": _all_matched([u[2] for u in pw], [u[2] for u in gw]),
        "group(no Having)": _all_matched(pg, gg),
        "group": (bool(pred["groupBy"]) == bool(gold["groupBy"])) and (
            not gold["groupBy"] or (both_group and [u[1] for u in pred["groupBy"]] == [u[1] for u in gold["groupBy"]]
                                    and pred["having"] == gold["having"])),
        "order": (bool(pred["orderBy"]) == bool(gold["orderBy"])) and (
            not gold["orderBy"] or (pred["orderBy"] == gold["orderBy"] and limit_same)),
        "and/or": set(pred["where"][1::2]) == set(gold["where"][1::2]),
        "IUEN": all(nested),
        "keywords": _keywords(pred) == _keywords(gold),
    }
    return scores


def exact_match(pred: dict, gold: dict, mode: str = "compat") -> bool:
    """Exact set match of two normalized trees (see :func:`normalize`)."""
    if not all(_component_scores(pred, gold, mode).values()):
        return False
    if gold["from"]["table_units"]:
        return _sorted_units(gold["from"]["table_units"]) == _sorted_units(pred["from"]["table_units"])
    return True


def _sorted_units(units: list) -> list:
    # the official sorts the raw tuples; two subqueries in FROM make it crash, we order by repr
    return sorted(units, key=lambda u: (u[0], repr(u[1])))


def prepare_prediction(pred: str, mode: str = "compat") -> str:
    """The prediction as the official evaluator sees it: one line, cut at its first tab, with
    every ``value`` replaced by ``1``. Unchanged (but stripped) in corrected mode."""
    pred = " ".join(pred.splitlines()).strip()
    if mode == "compat":
        pred = pred.split("\t")[0].replace("value", "1")
    return pred


# ---------------------------------------------------------------------------------------------
# Execution accuracy semantics

_CUR_YEAR = re.compile(r"YEAR\s*\(\s*CURDATE\s*\(\s*\)\s*\)\s*", re.IGNORECASE)
_TOP_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)


class UnscorableQuery(ValueError):
    """A query the execution semantics cannot prepare (sqlparse refuses it): the prediction
    is scored wrong, with this reason, never dropped from the count."""


def _statements(query: str) -> tuple:
    """sqlparse's statements of ``query``; :class:`UnscorableQuery` where sqlparse gives up
    (it stops at 10,000 tokens: a long ``1+1+...`` chain, deep parentheses, a huge UNION)."""
    import sqlparse
    from sqlparse.exceptions import SQLParseError

    try:
        return sqlparse.parse(query)
    except (SQLParseError, RecursionError) as exc:
        raise UnscorableQuery(f"the query cannot be split into statements: {exc}") from None


def remove_distinct(query: str) -> str:
    """The first statement with every DISTINCT keyword removed, as the official evaluator
    does before executing (with sqlparse; which is also why only one statement ever runs)."""
    statements = _statements(query)
    if not statements:
        return ""
    return "".join(t.value for t in statements[0].flatten() if t.value.lower() != "distinct")


def first_statement(query: str) -> str:
    statements = _statements(query)
    return str(statements[0]) if statements else ""


def _order_matters_corrected(gold: str) -> bool:
    depth, masked = 0, []
    for ch in re.sub(r"'[^']*'|\"[^\"]*\"", "''", gold):
        depth += ch == "("
        depth -= ch == ")"
        masked.append(ch if depth == 0 else " ")
    return bool(_TOP_ORDER_BY.search("".join(masked)))


def execution_queries(gold: str, pred: str, mode: str = "compat") -> tuple[str, str, bool]:
    """(gold to run, prediction to run, whether row order counts). ``pred`` is the raw prediction.
    Raises :class:`UnscorableQuery` when either cannot be prepared."""
    pred = prepare_prediction(pred, mode)
    if mode == "compat":
        gold = gold.strip()
        fix = lambda q: q.replace("> =", ">=").replace("< =", "<=").replace("! =", "!=")
        gold, pred = remove_distinct(fix(gold)), remove_distinct(fix(pred))
        order = "order by" in gold.lower()
    else:
        gold, pred = first_statement(gold), first_statement(pred)
        order = _order_matters_corrected(gold)
    return _CUR_YEAR.sub("2020", gold), _CUR_YEAR.sub("2020", pred), order


def _unordered_row(row: tuple) -> tuple:
    return tuple(sorted(row, key=lambda x: str(x) + str(type(x))))


def results_equal(gold: list[tuple], pred: list[tuple], order_matters: bool) -> bool:
    """Same multiset of rows (same sequence if ``order_matters``), up to a permutation of the
    columns; two empty results are equal."""
    if not gold and not pred:
        return True
    if len(gold) != len(pred):
        return False
    ncols = len(gold[0])
    if len(pred[0]) != ncols:
        return False
    ug, up = [_unordered_row(r) for r in gold], [_unordered_row(r) for r in pred]
    if (ug != up) if order_matters else (set(ug) != set(up)):
        return False
    gold_columns = [{row[i] for row in gold} for i in range(ncols)]
    # pred column j can stand for gold column i only if all its values occur there
    candidates = [[j for j in range(ncols) if all(row[j] in gold_columns[i] for row in pred)]
                  for i in range(ncols)]
    gold_set, gold_count = set(gold), None
    for perm in product(*candidates):
        if len(set(perm)) != ncols:
            continue
        permuted = pred if ncols == 1 else [tuple(row[j] for j in perm) for row in pred]
        if order_matters:
            if gold == permuted:
                return True
        elif set(permuted) == gold_set:
            gold_count = gold_count or Counter(gold)
            if Counter(permuted) == gold_count:
                return True
    return False


def db_paths_for(db_path: str) -> list[str]:
    """Every SQLite file beside ``db_path`` (the test-suite layout), as the official lists them."""
    import os

    folder = os.path.dirname(os.path.abspath(db_path))
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if ".sqlite" in f)


def iter_modes(mode: str) -> Iterable[str]:
    if mode not in MODES:
        raise ValueError(f"unknown Spider mode {mode!r}; valid: {', '.join(MODES)}")
    return (mode,)
