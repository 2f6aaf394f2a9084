"""The allow lists of vantage_core/sql/policy.py, on sqlglot trees alone (no engine): what a query
over the data needs passes; anything else is refused with a message naming it."""

from __future__ import annotations

import pytest
import sqlglot

from vantage_core.errors import DataError
from vantage_core.sql.policy import MAX_BUILT_CHARS, check_query, check_sql

TABLES = ("item", "Category")

PASSES = [  # (dialect, SQL as the engine is sent it)
    ("postgres", "SELECT count(*), avg(price), max(qty) FROM item WHERE name ILIKE 'x%' GROUP BY cat_id "
                 "HAVING count(*) > 1 ORDER BY 1 DESC NULLS LAST LIMIT 3 OFFSET 1"),
    ("postgres", 'SELECT "name" FROM "category" WHERE "code" IN (\'10\', \'20\') AND NOT "name" IS NULL'),
    ("postgres", "WITH c AS (SELECT cat_id FROM category) SELECT * FROM item WHERE cat_id IN (SELECT cat_id FROM c) "
                 "UNION SELECT * FROM item EXCEPT SELECT * FROM item INTERSECT SELECT * FROM item"),
    ("postgres", "SELECT CAST(AVG(price) AS DOUBLE PRECISION), (ARRAY_AGG(name ORDER BY price DESC NULLS LAST))[1] "
                 "FROM item"),
    ("postgres", "SELECT CASE WHEN qty > 3 THEN 'many' ELSE 'few' END, COALESCE(name, ''), NULLIF(qty, 0), "
                 "ABS(price - 1), ROUND(price, 2), LENGTH(name), LOWER(name) || UPPER(name), SUBSTRING(name, 1, 2) "
                 "FROM item"),
    ("postgres", "SELECT ROW_NUMBER() OVER (PARTITION BY cat_id ORDER BY price), RANK() OVER (ORDER BY qty) FROM item"),
    ("postgres", "SELECT EXTRACT(YEAR FROM CAST(name AS DATE)), CURRENT_DATE FROM item WHERE EXISTS "
                 "(SELECT 1 FROM category WHERE category.cat_id = item.cat_id)"),
    ("postgres", f"SELECT REPEAT('ab', {MAX_BUILT_CHARS}), LPAD(name, 20, '*'), RPAD(name, 5) FROM item"),
    ("duckdb", "SELECT ARG_MAX(name, price), ANY_VALUE(qty), qty // 2 FROM item GROUP BY cat_id"),
    ("duckdb", "SELECT strftime(CAST(name AS TIMESTAMP), '%Y') FROM item"),
    ("duckdb", "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT n FROM r"),
    ("sqlite", "SELECT julianday('now') - julianday(name), instr(name, 'a') FROM item"),
]


@pytest.mark.parametrize("dialect,sql", PASSES)
def test_queries_over_the_data_pass(dialect, sql):
    check_sql(sql, dialect, TABLES)  # raises DataError when refused


REFUSED = [  # (dialect, SQL, what the message must name)
    ("postgres", "SELECT * FROM ts_stat('SELECT to_tsvector(pg_read_file(''/etc/hostname''))')", "ts_stat()"),
    ("postgres", "SELECT query_to_xml('SELECT 1', true, true, '')", "query_to_xml()"),
    ("postgres", "SELECT pg_create_physical_replication_slot('s', true)", "pg_create_physical_replication_slot()"),
    ("postgres", "SELECT pg_stat_reset()", "pg_stat_reset()"),
    ("postgres", "SELECT pg_advisory_lock_shared(777)", "pg_advisory_lock_shared()"),
    ("postgres", "SELECT current_setting('data_directory')", "current_setting()"),
    ("postgres", "SELECT * FROM generate_series(1, 1000000000000)", "generate_series()"),
    ("duckdb", "SELECT json_execute_serialized_sql(json_serialize_sql('SELECT * FROM query(''SELECT 7'')'))",
     "json_execute_serialized_sql()"),
    ("duckdb", "SELECT * FROM query('SELECT 7')", "query()"),
    ("duckdb", "SELECT * FROM read_csv('/etc/passwd')", "read_csv()"),
    ("duckdb", "SELECT list_sum(range(300000000))", "list_sum()"),
    ("duckdb", "SELECT * FROM duckdb_databases()", "duckdb_databases()"),
    ("duckdb", "SELECT repeat('a', 900000000)", "repeat() needs a literal length from 0 to 10000"),
    ("postgres", "SELECT lpad('a', 10001, 'b')", "lpad() needs a literal length"),
    ("postgres", "SELECT repeat('a', qty) FROM item", "repeat() needs a literal length"),
    ("postgres", "SELECT repeat(repeat('a', 100), 100)", "repeat() around repeat()"),
    ("postgres", "SELECT replace(replace(name, 'a', 'aaaa'), 'a', 'aaaa') FROM item", "replace() around replace()"),
    ("postgres", "SELECT * FROM pg_settings", "table pg_settings"),
    ("postgres", "SELECT * FROM pg_catalog.pg_authid", "table pg_catalog.pg_authid"),
    ("postgres", "SELECT CAST('item' AS regclass)", "REGCLASS"),
    ("postgres", "SELECT CAST('<a/>' AS xml)", "a cast to XML"),
    ("postgres", "WITH d AS (DELETE FROM item RETURNING *) SELECT count(*) FROM d", "DELETE"),
    ("postgres", "SELECT * INTO copy FROM item", "INTO"),
    ("postgres", "SELECT * FROM item FOR UPDATE", "LOCK"),
    ("postgres", "SELECT $1", "PARAMETER"),
    ("postgres", "DELETE FROM item", "this is DELETE"),
    ("postgres", "SET statement_timeout = 0", "this is SET"),
    ("postgres", "LISTEN channel", "only queries that read"),
    ("postgres", "COPY item TO '/tmp/x.csv'", "only queries that read"),
]


@pytest.mark.parametrize("dialect,sql,named", REFUSED)
def test_everything_else_is_refused_by_name(dialect, sql, named):
    with pytest.raises(DataError) as err:
        check_sql(sql, dialect, TABLES)
    assert named in str(err.value), str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_functions_are_per_engine():
    """An engine's own function passes on that engine only (sqlglot does not know it)."""
    tree = sqlglot.parse_one("SELECT age(CAST(name AS TIMESTAMP)) FROM item", read="postgres")
    check_query(tree, "postgres", TABLES)
    with pytest.raises(DataError, match=r"function age\(\) is not allowed on DuckDB"):
        check_query(tree, "duckdb", TABLES)


def test_tables_are_the_databases_own_and_its_ctes():
    check_sql("WITH pg_settings AS (SELECT 1 AS a) SELECT a FROM pg_settings", "postgres", TABLES)
    check_sql("SELECT * FROM CATEGORY", "postgres", TABLES)  # names compare in any case
    check_sql("SELECT * FROM anything", "postgres", None)  # no list given: the engine decides
    with pytest.raises(DataError, match="table other is not allowed on PostgreSQL"):
        check_sql("SELECT * FROM item, other", "postgres", TABLES)


def test_one_statement_only():
    with pytest.raises(DataError, match="exactly one statement, got 2"):
        check_sql("SELECT 1; SELECT 2", "postgres")
