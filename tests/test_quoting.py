"""Table and column names are quoted by each engine's rules wherever they need it (keywords,
spaces, quotes inside names, unicode, mixed case on PostgreSQL) and stay bare elsewhere; the SQL a
pointer model's actions render to runs on SQLite, DuckDB and PostgreSQL (when a server can be had:
tests/conftest.py)."""

from __future__ import annotations

import sqlite3
import uuid

import pytest

from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.data.linking import schema_items
from vantage_core.data.sql_actions import ITEM, VOCAB, render_sql
from vantage_core.sql.names import DUCKDB_KEYWORDS, KEYWORDS, POSTGRES_KEYWORDS, SQLITE_KEYWORDS, needs_quotes, sql_name

# (table, columns, rows): names that need quotes on some engine, beside one that needs none
TABLES = [
    ("select", ["from", "order"], [(1, "a"), (2, "b")]),
    ("my table", ["Größe", 'a "quoted" col'], [(3, "c")]),
    ("MixedCase", ["CamelCol", "plain"], [(4, "d"), (5, "e")]),
    ("plain", ["name", "key"], [(6, "f")]),
]


def test_names_that_need_no_quotes_stay_bare():
    for dialect in KEYWORDS:
        assert sql_name("singer_id", dialect) == "singer_id" and sql_name("_x9", dialect) == "_x9"
    assert sql_name("Name", "sqlite") == sql_name("Name", "duckdb") == "Name"  # both match names case-blind


def test_names_that_need_quotes_are_quoted_by_each_engines_rules():
    for dialect in KEYWORDS:
        assert sql_name("select", dialect) == '"select"' and sql_name("FROM", dialect) == '"FROM"'
        assert sql_name("my table", dialect) == '"my table"'
        assert sql_name('a "b" c', dialect) == '"a ""b"" c"'  # a quote inside is doubled
        assert sql_name("Größe", dialect) == '"Größe"' and sql_name("1st", dialect) == '"1st"'
    assert sql_name("Name", "postgres") == '"Name"'  # PostgreSQL folds a bare Name to name
    assert sql_name("key", "sqlite") == '"key"' and sql_name("key", "postgres") == "key"
    with pytest.raises(ValueError, match="no quoting rules for dialect 'mysql'; known: duckdb, postgres, sqlite"):
        sql_name("x", "mysql")


def test_keyword_lists_are_the_installed_engines():
    """DuckDB's reserved and type-or-function keywords are exactly the list; every SQLite keyword
    needs its quotes (sqlite3 refuses some bare, and quoted each one works)."""
    import duckdb

    duck = {w for (w,) in duckdb.connect().execute(
        "SELECT keyword_name FROM duckdb_keywords() WHERE keyword_category IN ('reserved', 'type_function')"
    ).fetchall()}
    assert duck == set(DUCKDB_KEYWORDS)
    conn = sqlite3.connect(":memory:")
    refused_bare = 0
    for word in sorted(SQLITE_KEYWORDS):
        q = sql_name(word)
        conn.execute(f"CREATE TABLE {q} ({q} INTEGER)")
        assert conn.execute(f"SELECT {q}.{q} FROM {q}").fetchall() == []
        try:
            conn.execute(f"SELECT {word}.{word} FROM {word}")
        except sqlite3.OperationalError:
            refused_bare += 1
    assert refused_bare >= 60


def test_a_bare_name_reads_back_as_itself_in_sqlite_and_its_transpiler():
    """Every engine keyword and every word sqlglot's SQLite reader knows: left bare only where
    SQLite runs it as that name and sqlglot reads it as a name, in every clause."""
    import duckdb
    import sqlglot
    from sqlglot import exp
    from sqlglot.dialects import SQLite

    words = {w for (w,) in duckdb.connect().execute("SELECT keyword_name FROM duckdb_keywords()").fetchall()}
    words |= {k.lower() for k in SQLite.Tokenizer.KEYWORDS if k.replace("_", "").isalpha()}
    words |= POSTGRES_KEYWORDS | SQLITE_KEYWORDS
    conn = sqlite3.connect(":memory:")
    bare = [w for w in sorted(words) if not needs_quotes(w)]
    assert len(bare) > 300  # most words are names to both
    for w in bare:
        sql = f"SELECT {w}.{w}, {w} FROM {w} WHERE {w} = 1 GROUP BY {w} ORDER BY {w}"
        tree = sqlglot.parse_one(sql, read="sqlite")
        assert [i.name for i in tree.find_all(exp.Identifier)].count(w) == 7, w
        conn.execute(f"CREATE TABLE {w} ({w} INTEGER)")
        assert conn.execute(sql).fetchall() == [], w


def _schema() -> Schema:
    return Schema("names", [Table(t, [Column(c, "number" if i == 0 else "text") for i, c in enumerate(cols)])
                            for t, cols, _ in TABLES], [])


def _rendered(table: str, columns: list[str], where: str | None = None) -> str:
    """The SQL a pointer model's actions for ``SELECT columns FROM table [WHERE col > 0]`` render to."""
    items = schema_items(_schema())
    index = {(it.table, it.column): i for i, it in enumerate(items)}
    actions = [(VOCAB, "select")]
    for k, c in enumerate(columns):
        actions += ([(VOCAB, ",")] if k else []) + [(ITEM, index[(table, c)])]
    actions += [(VOCAB, "from"), (ITEM, index[(table, None)])]
    if where:
        actions += [(VOCAB, "where"), (ITEM, index[(table, where)]), (VOCAB, ">"), (VOCAB, "0")]
    return render_sql(actions, items, "", [])


def test_keyword_names_render_quoted_and_plain_names_bare():
    assert _rendered("select", ["from"]) == 'select "select"."from" from "select"'
    assert _rendered("my table", ['a "quoted" col', "Größe"]) == \
        'select "my table"."a ""quoted"" col" , "my table"."Größe" from "my table"'
    assert _rendered("MixedCase", ["CamelCol"], where="CamelCol") == \
        "select MixedCase.CamelCol from MixedCase where MixedCase.CamelCol > 0"
    assert _rendered("plain", ["name", "key"]) == 'select plain.name , plain."key" from plain'


def _create_tables(conn, dialect: str) -> None:
    """TABLES created with their exact names, as ``dialect`` needs them quoted."""
    for table, cols, rows in TABLES:
        q = sql_name(table, dialect)
        conn.execute(f"CREATE TABLE {q} ({sql_name(cols[0], dialect)} INTEGER, {sql_name(cols[1], dialect)} TEXT)")
        for row in rows:
            conn.execute(f"INSERT INTO {q} VALUES ({row[0]}, '{row[1]}')")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A SQLite file with the awkward names of TABLES."""
    path = tmp_path_factory.mktemp("names") / "names.sqlite"
    conn = sqlite3.connect(path)
    _create_tables(conn, "sqlite")
    conn.commit()
    conn.close()
    return path


def test_cell_value_readers_quote_awkward_names(source):
    """The linker's values, the value writer's cased values and the schema text's sample values
    are read from columns whose names hold spaces, quotes and keywords, not skipped."""
    from vantage_core.data.linking import cased_values, column_values
    from vantage_core.sql.sqlite_file import schema_from_sqlite
    from vantage_core.sql.values import sample_values

    values = column_values(source, schema_from_sqlite(source))
    assert values[("my table", 'a "quoted" col')] == {"c"} and values[("select", "order")] == {"a", "b"}
    assert cased_values(str(source))["c"] == "c"
    assert sample_values(source, "my table", 'a "quoted" col', 5) == ["c"]
    assert sample_values(source, "select", "order", 5) == ["a", "b"]


def _queries() -> list[tuple[str, list[tuple]]]:
    return [(_rendered(t, cols, where=cols[0]), sorted(rows)) for t, cols, rows in TABLES]


def _runs_everywhere(url: str) -> None:
    from vantage_core.sql.database import open_database

    db = open_database(url)
    assert sorted(t.name for t in db.schema().tables) == sorted(t for t, _, _ in TABLES)
    assert sorted(db.cased_values()) == sorted(row[1] for _, _, rows in TABLES for row in rows)  # the linker's
    for sql, rows in _queries():
        res = db.execute(sql, 10.0)
        assert res.ok, (sql, res.transpiled, res.error)
        assert sorted(res.rows) == rows, (sql, res.transpiled)


def test_rendered_sql_runs_on_sqlite(source):
    _runs_everywhere(f"sqlite:///{source}")


def test_rendered_sql_runs_on_duckdb(source, tmp_path):
    from vantage_core.data.load_into import load_into

    url = f"duckdb:///{tmp_path / 'names.duckdb'}"
    load_into(url, source)
    _runs_everywhere(url)


def test_rendered_sql_runs_on_postgresql(postgres_server):
    """On tables created with their exact names (MixedCase stays MixedCase), read by a role that
    can only SELECT."""
    import psycopg

    from conftest import as_role, with_database
    from vantage_core.sql.database import close_all

    tag = uuid.uuid4().hex[:8]
    name, reader = f"vt_names_{tag}", f"vt_names_reader_{tag}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        admin.execute(f"CREATE ROLE {reader} LOGIN")
    try:
        with psycopg.connect(with_database(postgres_server, name)) as conn:
            _create_tables(conn, "postgres")
            conn.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC; GRANT SELECT ON ALL TABLES IN SCHEMA public "
                         f"TO {reader}")
        _runs_everywhere(as_role(with_database(postgres_server, name), reader))
    finally:
        close_all()
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            admin.execute(f"DROP ROLE IF EXISTS {reader}")
