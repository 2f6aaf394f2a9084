"""What SQL may reach an engine other than SQLite's sandbox: allow lists, not deny lists.

A connector transpiles the model's SQLite SQL with sqlglot and, before anything runs, walks the
tree of the statement it is about to send (:func:`check_query`, or :func:`check_sql` on the text).
The statement must be one query that only reads (SELECT, WITH ... SELECT, UNION / INTERSECT /
EXCEPT, VALUES), and every part of it must be on a list of what a SELECT over the data needs:
its clauses and operators, the aggregate, window, string, math, date and time functions, casts
to plain types, and the database's own tables. Anything else is refused by name. A string that
holds SQL is then harmless, since every function that could run it (``ts_stat``,
``query_to_xml``, ``json_execute_serialized_sql``, ``query``) is off the list, and so is every
function that reaches the server's files, settings, locks, replication or statistics.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from vantage_core.errors import DataError

ENGINES = {"postgres": "PostgreSQL", "duckdb": "DuckDB", "sqlite": "SQLite"}
# the longest string repeat() or a pad may build from a literal length (a larger one is refused:
# engines allocate it before any deadline can interrupt them)
MAX_BUILT_CHARS = 10_000

# the statement at the top, and the parts of a query (sqlglot's expression classes by name)
TOP = frozenset({"Select", "Union", "Intersect", "Except", "Values"})
CLAUSES = frozenset({
    "Select", "Union", "Intersect", "Except", "Values", "Subquery", "Tuple", "From", "Join", "Where", "Group",
    "Having", "Order", "Ordered", "Limit", "Offset", "Distinct", "With", "CTE", "TableAlias", "Alias", "Column",
    "Identifier", "Star", "Literal", "Null", "Boolean", "Paren", "Neg", "Not", "Add", "Sub", "Mul", "Div", "IntDiv",
    "Mod", "DPipe", "EQ", "NEQ", "GT", "GTE", "LT", "LTE", "NullSafeEQ", "NullSafeNEQ", "Is", "In", "Between",
    "Like", "ILike", "DataType", "DataTypeParam", "Window", "WindowSpec", "Bracket", "Var", "Filter", "All", "Any",
    "Escape", "Interval", "Table", "IgnoreNulls", "RespectNulls",
})
# functions by sqlglot's class: the meaning is sqlglot's, whatever the engine calls it
FUNCTIONS = frozenset({
    # aggregates
    "Count", "Sum", "Avg", "Min", "Max", "ArrayAgg", "GroupConcat", "Stddev", "StddevPop", "StddevSamp",
    "Variance", "VariancePop", "AnyValue", "ArgMax", "ArgMin", "CountIf", "Median", "LogicalAnd", "LogicalOr",
    "PercentileCont", "PercentileDisc",
    # window functions
    "RowNumber", "Rank", "DenseRank", "Lag", "Lead", "FirstValue", "LastValue", "NthValue", "Ntile",
    "PercentRank", "CumeDist",
    # logic, conditionals and casts
    "And", "Or", "Coalesce", "Nullif", "If", "Case", "Greatest", "Least", "Cast", "TryCast", "Exists",
    # math
    "Abs", "Round", "Ceil", "Floor", "Sqrt", "Exp", "Ln", "Log", "Pow", "Sign", "Trunc", "Cbrt", "Pi",
    # strings (repeat and the pads with a bounded length: see MAX_BUILT_CHARS)
    "Length", "Lower", "Upper", "Trim", "Substring", "Concat", "ConcatWs", "StrPosition", "Left", "Right",
    "Initcap", "Reverse", "Replace", "Repeat", "Pad",
    # dates and times
    "CurrentDate", "CurrentTimestamp", "CurrentTime", "TimeToStr", "StrToTime", "StrToDate", "TsOrDsToTimestamp",
    "TsOrDsToDate", "Date", "Datetime", "DateAdd", "DateSub", "DateDiff", "DateTrunc", "TimestampTrunc", "Extract",
    "Year", "Month", "Day", "TimeStrToTime", "TimeStrToDate", "UnixToTime", "TimeToUnix", "DayOfWeek",
    "DayOfMonth", "DayOfYear", "WeekOfYear", "Quarter",
})
# functions sqlglot does not know (its Anonymous calls), by the engine's own name
ENGINE_FUNCTIONS = {
    "postgres": frozenset({"strpos", "char_length", "character_length", "date_part", "to_char", "to_date",
                           "to_timestamp", "btrim", "ltrim", "rtrim", "split_part", "rank", "dense_rank", "age"}),
    "duckdb": frozenset({"arg_max", "arg_min", "any_value", "strftime", "strptime", "date_part", "ltrim", "rtrim",
                         "instr", "split_part", "rank", "dense_rank"}),
    "sqlite": frozenset({"julianday", "instr", "total", "typeof", "ltrim", "rtrim", "ifnull", "iif", "strftime",
                         "substr", "datetime", "time", "nullif", "printf", "char", "unicode"}),
}
# plain types a cast may name (DataType.Type names)
TYPES = frozenset({
    "INT", "BIGINT", "SMALLINT", "TINYINT", "MEDIUMINT", "INT128", "UINT", "UBIGINT", "USMALLINT", "UTINYINT",
    "UMEDIUMINT", "UINT128", "DOUBLE", "FLOAT", "DECIMAL", "BIGDECIMAL", "TEXT", "VARCHAR", "CHAR", "NCHAR",
    "NVARCHAR", "BPCHAR", "BOOLEAN", "DATE", "DATETIME", "TIMESTAMP", "TIMESTAMPTZ", "TIMESTAMPNTZ",
    "TIMESTAMPLTZ", "TIME", "TIMETZ", "INTERVAL", "BLOB", "VARBINARY",
})
# functions that build a string longer than their input (bounded, and never nested)
AMPLIFIERS = frozenset({"Repeat", "Pad", "Replace"})


def check_sql(sql: str, dialect: str, tables: Iterable[str] | None = None) -> None:
    """:func:`check_query` on SQL text as ``dialect`` reads it (the text an engine is sent)."""
    import sqlglot
    from sqlglot.errors import ParseError

    try:
        trees = [t for t in sqlglot.parse(sql, read=dialect) if t is not None]
    except ParseError as exc:
        raise DataError(f"cannot parse the SQL as {engine_name(dialect)} reads it: {str(exc).splitlines()[0]}") \
            from None
    if len(trees) != 1:
        raise DataError(f"give exactly one statement, got {len(trees)}")
    check_query(trees[0], dialect, tables)


def check_query(tree: Any, dialect: str, tables: Iterable[str] | None = None) -> None:
    """:class:`DataError`, naming what was refused, unless ``tree`` (a sqlglot expression) is one
    query that only reads and calls only allowed functions, in ``dialect`` (sqlglot's name:
    ``postgres``, ``duckdb``, ``sqlite``). ``tables``: the names the query may read (any case;
    its own CTEs are added), or None to leave table names to the engine."""
    from sqlglot import exp

    engine = engine_name(dialect)
    kind = type(tree).__name__
    if kind not in TOP:
        raise DataError(f"only queries that read are run on {engine} (SELECT, WITH ... SELECT, UNION, ...); "
                        f"this is {_spelled(tree, dialect)}")
    readable = _readable_tables(tree, tables)
    for node in tree.walk():
        if isinstance(node, exp.Func):
            _check_function(node, dialect, engine)
        elif type(node).__name__ not in CLAUSES:
            raise DataError(f"{_spelled(node, dialect)} is not allowed in a query on {engine}; a query may use SELECT's "
                            f"clauses, operators and the functions a SELECT over the data needs")
        elif isinstance(node, exp.DataType):
            _check_type(node, dialect, engine)
        elif isinstance(node, exp.Table):
            _check_table(node, readable, dialect, engine)


def engine_name(dialect: str) -> str:
    """The engine a sqlglot dialect name stands for, for messages."""
    return ENGINES.get(dialect, dialect)


def function_name(node: Any, dialect: str) -> str:
    """A function call's name as ``dialect`` spells it, lower-case (``ts_stat``, ``read_csv``)."""
    from sqlglot import exp

    if isinstance(node, exp.Anonymous):
        return node.name.lower()
    written = _written(node, dialect).split("(", 1)[0].strip()
    return (written if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", written) else node.sql_name()).lower()


def _written(node: Any, dialect: str) -> str:
    """A node's SQL in ``dialect`` on one line ("" when sqlglot cannot write it)."""
    try:
        return " ".join(node.sql(dialect=dialect).split())
    except Exception:  # noqa: BLE001 - a node sqlglot cannot write back is named by its kind
        return ""


def _spelled(node: Any, dialect: str) -> str:
    """A node for messages: its SQL's first words, else its kind."""
    text = _written(node, dialect)
    kind = type(node).__name__.upper()
    return f"{kind} ({text[:60]})" if text else kind


def _check_function(node: Any, dialect: str, engine: str) -> None:
    from sqlglot import exp

    kind = type(node).__name__
    allowed = kind in FUNCTIONS if not isinstance(node, exp.Anonymous) \
        else node.name.lower() in ENGINE_FUNCTIONS.get(dialect, frozenset())
    if not allowed:
        raise DataError(f"function {function_name(node, dialect)}() is not allowed on {engine}: a query may call only "
                        f"the aggregate, window, string, math, date and time functions and casts a SELECT "
                        f"over the data needs")
    if kind in AMPLIFIERS:
        _check_amplifier(node, dialect, engine)


def _check_amplifier(node: Any, dialect: str, engine: str) -> None:
    """repeat() and the pads need a literal length of at most MAX_BUILT_CHARS; no string builder
    may hold another (nested, their lengths multiply)."""
    from sqlglot import exp

    name = function_name(node, dialect)
    inner = [n for n in node.find_all(exp.Func) if n is not node and type(n).__name__ in AMPLIFIERS]
    if inner:
        raise DataError(f"{name}() around {function_name(inner[0], dialect)}() is not allowed on {engine}: string "
                        f"builders may not be nested")
    if type(node).__name__ == "Replace":
        return
    length = node.args.get("times") if type(node).__name__ == "Repeat" else node.args.get("expression")
    if not (isinstance(length, exp.Literal) and not length.is_string and _bounded(length.this)):
        got = length.sql(dialect=dialect) if length is not None else "none"
        raise DataError(f"{name}() needs a literal length from 0 to {MAX_BUILT_CHARS} on {engine}; got {got}")


def _bounded(text: str) -> bool:
    try:
        return 0 <= float(text) <= MAX_BUILT_CHARS
    except ValueError:
        return False


def _check_type(node: Any, dialect: str, engine: str) -> None:
    name = node.this.name if hasattr(node.this, "name") else str(node.this)
    if name not in TYPES:
        raise DataError(f"a cast to {_written(node, dialect)} is not allowed on {engine}; cast to a number, text, boolean, "
                        f"date or time type")


def _readable_tables(tree: Any, tables: Iterable[str] | None) -> set[str] | None:
    from sqlglot import exp

    if tables is None:
        return None
    return {t.lower() for t in tables} | {c.alias.lower() for c in tree.find_all(exp.CTE) if c.alias}


def _check_table(node: Any, readable: set[str] | None, dialect: str, engine: str) -> None:
    from sqlglot import exp

    if not isinstance(node.this, exp.Identifier):
        return  # a table function: checked as a function
    if node.args.get("db") or node.args.get("catalog"):
        raise DataError(f"table {_written(node, dialect)} is not allowed on {engine}: a query reads this database's own "
                        f"tables, named without a schema")
    if readable is not None and node.name.lower() not in readable:
        raise DataError(f"table {node.name} is not allowed on {engine}: a query reads this database's own "
                        f"tables only")
