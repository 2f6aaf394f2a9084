"""WikiSQL's logical-form accuracy (the same selected column and aggregate, and the same set of
conditions, values compared as lower-cased text) and execution accuracy."""

from __future__ import annotations

import re
from typing import Any

from vantage_core.api import Example, ExecutingMetric, results_equal, summarize_by

AGG_OPS = ("", "MAX", "MIN", "COUNT", "SUM", "AVG")
COND_OPS = ("=", ">", "<", "OP")


class LogicalFormError(ValueError):
    pass


def _column_index(name: str, columns: list[str]) -> int:
    low = name.strip('`"[] ').lower()
    lowered = [c.lower() for c in columns]
    if low in lowered:
        return lowered.index(low)
    m = re.fullmatch(r"col(\d+)", low)
    if m and int(m.group(1)) < max(len(columns), 1_000_000):
        return int(m.group(1))
    raise LogicalFormError(f"unknown column {name!r}")


def _value_text(value: Any) -> str:
    text = str(value).strip()
    try:
        number = float(text)
        if number.is_integer():
            return str(int(number))
        return repr(number)
    except ValueError:
        return text.lower()


def logical_form(sql: str, columns: list[str]) -> dict[str, Any]:
    """``{"sel", "agg", "conds": [[col, op, value]]}`` of a WikiSQL-shaped query (one select
    item, optional aggregate, AND-ed comparisons); raises :class:`LogicalFormError` otherwise."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except Exception as exc:  # noqa: BLE001 - sqlglot's errors vary by version
        raise LogicalFormError(f"does not parse: {exc}") from None
    if not isinstance(tree, exp.Select) or len(tree.expressions) != 1:
        raise LogicalFormError("not a single-column SELECT")
    item = tree.expressions[0].unalias()
    agg = 0
    for k, name in enumerate(AGG_OPS[1:], start=1):
        if isinstance(item, getattr(exp, name.capitalize())):
            agg, item = k, item.this
            break
    if isinstance(item, exp.Distinct):
        item = item.expressions[0]
    if not isinstance(item, exp.Column):
        raise LogicalFormError("the selected item is not a column")
    sel = _column_index(item.name, columns)
    conds = []
    where = tree.args.get("where")
    parts = []
    if where is not None:
        stack = [where.this]
        while stack:
            node = stack.pop()
            if isinstance(node, exp.And):
                stack += [node.right, node.left]
            elif isinstance(node, exp.Paren):
                stack.append(node.this)
            else:
                parts.append(node)
    ops = {exp.EQ: "=", exp.GT: ">", exp.LT: "<"}
    for node in parts:
        op = next((o for cls, o in ops.items() if isinstance(node, cls)), None)
        if op is None or not isinstance(node.left, exp.Column):
            raise LogicalFormError(f"unsupported condition {node.sql()}")
        right = node.right
        value = right.this if isinstance(right, exp.Literal) else right.sql()
        conds.append([_column_index(node.left.name, columns), COND_OPS.index(op), value])
    return {"sel": sel, "agg": agg, "conds": conds}


def _columns(example: Example) -> list[str]:
    return [c.name for c in example.schema.tables[0].columns] if example.schema.tables else []


def _same_form(a: dict[str, Any], b: dict[str, Any]) -> bool:
    conds = lambda f: {(int(c), int(o), _value_text(v)) for c, o, v in f["conds"]}
    return int(a["sel"]) == int(b["sel"]) and int(a["agg"]) == int(b["agg"]) and conds(a) == conds(b)


class WikiSQLLogicalForm:
    """Logical-form accuracy. The gold form is ``extras["wikisql_sql"]`` when the adapter kept
    it, else parsed back from the gold SQL."""

    name, key = "wikisql_lf", "lf"

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        columns = _columns(example)
        gold = example.extras.get("wikisql_sql")
        if not isinstance(gold, dict):
            try:
                gold = logical_form(example.sql, columns)
            except LogicalFormError as exc:
                return {"lf": None, "error": f"gold: {exc}"}
        try:
            pred = logical_form(prediction, columns)
        except LogicalFormError as exc:
            return {"lf": 0, "error": f"prediction: {exc}"}
        return {"lf": int(_same_form(pred, gold))}

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_by(scores, "lf", self.name, group=None)


class WikiSQLExecution(ExecutingMetric):
    """Execution accuracy: the same multiset of answers on the example's table."""

    name, key = "wikisql_ex", "exec"

    def score(self, example: Example, prediction: str) -> dict[str, Any]:
        if not example.db_paths:
            return {"exec": None, "error": "example has no database"}
        gold = self.run_gold(example.db_paths[0], example.sql)
        if not gold.ok:
            return {"exec": None, "error": f"gold fails: {gold.error}"}
        pred = self.run_prediction(example.db_paths[0], prediction, gold)
        if not pred.ok:
            return {"exec": 0, "error": pred.error, "timed_out": pred.timed_out}
        return {"exec": int(self.same_rows(gold, pred, False, results_equal))}

    def summarize(self, scores: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize_by(scores, "exec", self.name, group=None)
