"""BIRD's EX and VES, WikiSQL's logical form and execution, and valid_sql."""

import sqlite3

import pytest

from vantage_core.data.example import Example
from vantage_core.sql.schema import Column, Schema, Table
from vantage_plugins.metrics.bird import BirdExecution, BirdVES
from vantage_plugins.metrics.valid_sql import ValidSQL
from vantage_plugins.metrics.wikisql import WikiSQLExecution, WikiSQLLogicalForm, logical_form


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("bw") / "t.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE table_1_2 (col0 TEXT, col1 INT, col2 TEXT)")
    conn.executemany("INSERT INTO table_1_2 VALUES (?,?,?)",
                     [("ann", 3, "x"), ("bob", 5, "y"), ("cid", 5, "x"), ("ann", 9, "z")])
    conn.commit()
    conn.close()
    return path


SCHEMA = Schema("1-2", [Table("table_1_2", [Column("col0"), Column("col1", "number"), Column("col2")])])


def ex(db, sql, **extras):
    return Example("q", sql, "1-2", SCHEMA, [str(db)], "bird", extras)


def test_bird_ex_is_set_equality(db):
    metric = BirdExecution(timeout_s=2.0)
    gold = ex(db, "SELECT col0 FROM table_1_2 WHERE col1 = 5", difficulty="simple")
    assert metric.score(gold, "SELECT DISTINCT col0 FROM table_1_2 WHERE col1 >= 5 AND col1 < 6")["exec"] == 1
    assert metric.score(gold, "SELECT col0 FROM table_1_2")["exec"] == 0
    assert metric.score(gold, "SELECT col1, col0 FROM table_1_2 WHERE col1 = 5")["exec"] == 0  # columns count
    scored = metric.score(gold, "DELETE FROM table_1_2")
    assert scored["exec"] == 0 and scored["error"]
    summary = metric.summarize([{"exec": 1, "difficulty": "simple"}, {"exec": 0, "difficulty": "moderate"}])
    assert summary["bird_ex"] == 0.5 and summary["by_difficulty"]["simple"]["bird_ex"] == 1.0
    metric.close()


def test_bird_ves(db):
    metric = BirdVES(timeout_s=2.0, iterations=3)
    gold = ex(db, "SELECT count(*) FROM table_1_2")
    right = metric.score(gold, "SELECT count(*) FROM table_1_2")
    assert right["exec"] == 1 and right["time_ratio"] > 0 and right["ves"] == pytest.approx(100 * right["time_ratio"] ** 0.5)
    wrong = metric.score(gold, "SELECT count(*) FROM table_1_2 WHERE col1 > 3")
    assert wrong["exec"] == 0 and wrong["ves"] == 0
    metric.close()


def test_wikisql_logical_form():
    cols = ["col0", "col1", "col2"]
    assert logical_form("SELECT MAX(col1) FROM t WHERE col0 = 'Ann' AND col2 > 3", cols) == \
        {"sel": 1, "agg": 1, "conds": [[0, 0, "Ann"], [2, 1, "3"]]}
    metric = WikiSQLLogicalForm()
    gold = ex(None, "SELECT col0 FROM t", wikisql_sql={"sel": 0, "agg": 3, "conds": [[1, 0, 5], [2, 0, "X"]]})
    assert metric.score(gold, "SELECT COUNT(col0) FROM t WHERE col2 = 'x' AND col1 = 5.0")["lf"] == 1  # set, case
    assert metric.score(gold, "SELECT COUNT(col0) FROM t WHERE col2 = 'x'")["lf"] == 0
    assert metric.score(gold, "SELECT col0 FROM t WHERE col2 = 'x' AND col1 = 5")["lf"] == 0  # aggregate
    assert metric.score(gold, "not sql at all")["lf"] == 0
    parsed_gold = ex(None, "SELECT col2 FROM t WHERE col1 < 4")
    assert metric.score(parsed_gold, "SELECT col2 FROM t WHERE col1 < 4")["lf"] == 1


def test_wikisql_execution_and_valid_sql(db):
    metric = WikiSQLExecution(timeout_s=2.0)
    gold = ex(db, "SELECT col0 FROM table_1_2 WHERE col1 = 5")
    assert metric.score(gold, "SELECT col0 FROM table_1_2 WHERE col1 > 4 AND col1 < 6")["exec"] == 1
    assert metric.score(gold, "SELECT col0 FROM table_1_2 WHERE col1 = 3")["exec"] == 0
    metric.close()
    valid = ValidSQL(timeout_s=2.0)
    assert valid.score(gold, "SELECT col0 FROM table_1_2")["valid"] == 1
    assert valid.score(gold, "SELECT nope FROM table_1_2")["valid"] == 0
    assert valid.score(gold, "SELEC col0 FROM")["valid"] == 0
    valid.close()
