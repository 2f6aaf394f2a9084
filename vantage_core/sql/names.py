"""Table and column names written into SQL, quoted by each engine's rules where they need it.

A name stays bare when the engine reads it back as the same name: letters, digits and ``_``, not
starting with a digit, and not one of the engine's keywords. Anything else is double-quoted, with
a double quote inside the name doubled. PostgreSQL folds a bare name to lower case, so a name with
an upper-case letter is quoted there; SQLite and DuckDB match names without regard to case.

The keyword lists are the engines' own: SQLite's documented keywords (lang_keywords.html: "If you
want to use a keyword as a name, you need to quote it"), DuckDB's reserved and type-or-function
keywords (``duckdb_keywords()``), PostgreSQL's reserved and type-or-function keywords
(``pg_get_keywords()``, categories R and T). SQLite SQL is also read by sqlglot to transpile it to
the other engines, so the words sqlglot's SQLite reader takes as keywords are quoted there too.
``tests/test_quoting.py`` checks the lists against the installed engines.
"""

from __future__ import annotations

import re

SQLITE_KEYWORDS = frozenset("""
abort action add after all alter always analyze and as asc attach autoincrement before begin between by cascade
case cast check collate column commit conflict constraint create cross current current_date current_time
current_timestamp database default deferrable deferred delete desc detach distinct do drop each else end escape
except exclude exclusive exists explain fail filter first following for foreign from full generated glob group
groups having if ignore immediate in index indexed initially inner insert instead intersect into is isnull join
key last left like limit match materialized natural no not nothing notnull null nulls of offset on or order others
outer over partition plan pragma preceding primary query raise range recursive references regexp reindex release
rename replace restrict returning right rollback row rows savepoint select set table temp temporary then ties to
transaction trigger unbounded union unique update using vacuum values view virtual when where window with without
""".split())
# not SQLite keywords, but sqlglot's SQLite reader does not take them as a bare name
TRANSPILER_WORDS = frozenset("""
any cube current_user describe false fetch grant ilike lateral lock partitioned_by qualify revoke rlike rollup
tablesample true uncache xor
""".split())
DUCKDB_KEYWORDS = frozenset("""
all analyse analyze and anti any array as asc asof asymmetric at authorization binary both by case cast check
collate collation column columns concurrently constraint create cross default deferrable desc describe distinct do
else end except false fetch for foreign freeze from full generated glob group having ilike in initially inner
intersect into is isnull join lambda lateral leading left like limit map natural not notnull null offset on only or
order outer overlaps pivot pivot_longer pivot_wider placing positional primary qualify references returning right
select semi show similar some struct summarize symmetric table tablesample then to trailing true try_cast union
unique unpack unpivot using variadic verbose when where window with
""".split())
POSTGRES_KEYWORDS = frozenset("""
all analyse analyze and any array as asc asymmetric authorization binary both case cast check collate collation
column concurrently constraint create cross current_catalog current_date current_role current_schema current_time
current_timestamp current_user default deferrable desc distinct do else end except false fetch for foreign freeze
from full grant group having ilike in initially inner intersect into is isnull join lateral leading left like
limit localtime localtimestamp natural not notnull null offset on only or order outer overlaps placing primary
references returning right select session_user similar some symmetric system_user table tablesample then to
trailing true union unique user using variadic verbose when where window with
""".split())
KEYWORDS = {"sqlite": SQLITE_KEYWORDS | TRANSPILER_WORDS, "duckdb": DUCKDB_KEYWORDS, "postgres": POSTGRES_KEYWORDS}
BARE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quoted(name: str) -> str:
    """``name`` double-quoted, a double quote inside it doubled (every engine here reads it)."""
    return '"' + name.replace('"', '""') + '"'


def needs_quotes(name: str, dialect: str = "sqlite") -> bool:
    """Whether ``dialect`` (sqlglot's name: sqlite, duckdb, postgres) reads ``name`` written bare
    as some other name, a keyword, or not at all."""
    if dialect not in KEYWORDS:
        raise ValueError(f"no quoting rules for dialect {dialect!r}; known: {', '.join(sorted(KEYWORDS))}")
    if not BARE.fullmatch(name) or name.lower() in KEYWORDS[dialect]:
        return True
    return dialect == "postgres" and name != name.lower()


def sql_name(name: str, dialect: str = "sqlite") -> str:
    """``name`` as ``dialect`` needs it written: bare where that reads back as the name, else quoted."""
    return quoted(name) if needs_quotes(name, dialect) else name
