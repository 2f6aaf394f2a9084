"""Database connectors on real engines: SQLite files, DuckDB files and a real PostgreSQL server.

Each connector's four duties (introspect, execute read-only and bounded, speak its dialect, be
named by URL) and the hostile battery of tests/test_executor.py repeated on each engine: every
query refused or stopped by its own limits, every database unchanged (byte for byte for files,
row for row for PostgreSQL). PostgreSQL tests use ``$VANTAGE_TEST_POSTGRES_URL`` when it is set,
else a throwaway cluster the session starts (tests/conftest.py); where neither can be had they
skip, saying so. No test reads the wall clock.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import urllib.parse
import uuid

import pytest

from conftest import as_role, with_database
from vantage_core.sql.database import DialectResult, database_id, file_of_url, is_url, open_database, url_for, url_scheme
from vantage_core.errors import DataError

TIMEOUT = 1.0
ENGINES = ("sqlite", "duckdb", "postgresql")


def make_source(path):
    """A small shop: keys, mixed-case names, text values to link, numbers to divide."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE Category (cat_id INTEGER PRIMARY KEY, Name TEXT, code TEXT);
        CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL, qty INTEGER,
                           cat_id INTEGER REFERENCES Category(cat_id));
        INSERT INTO Category VALUES (1, 'Tools', '10'), (2, 'Garden', '20');
    """)
    conn.executemany("INSERT INTO item VALUES (?, ?, ?, ?, ?)",
                     [(i, f"Item{i}", i * 1.5, i % 7, 1 + i % 2) for i in range(500)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return make_source(tmp_path_factory.mktemp("src") / "shop.sqlite")


@pytest.fixture(scope="module")
def pg_server(postgres_server):
    """The test server's superuser URL."""
    return postgres_server


@pytest.fixture(scope="module")
def pg_db(pg_server, source):
    """A fresh database loaded from the source, and a SELECT-only role's URL for it; dropped after."""
    import psycopg

    from vantage_core.data.load_into import load_into

    name = f"vt_{uuid.uuid4().hex[:10]}"
    url = with_database(pg_server, name)
    summary = load_into(url, source, reader="vantage_test_reader")
    assert summary.tables == 2 and summary.rows == 502 and summary.keys_added == 3, summary.line()
    yield as_role(url, "vantage_test_reader")
    from vantage_core.sql.database import close_all

    close_all()
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def duck_url(source, tmp_path_factory):
    from vantage_core.data.load_into import load_into

    url = f"duckdb:///{tmp_path_factory.mktemp('duck') / 'shop.duckdb'}"
    summary = load_into(url, source)
    assert summary.tables == 2 and summary.rows == 502 and summary.keys_added == 3, summary.line()
    return url


@pytest.fixture(params=ENGINES)
def url(request, source):
    if request.param == "sqlite":
        return f"sqlite:///{source}"
    return request.getfixturevalue("duck_url" if request.param == "duckdb" else "pg_db")


def fingerprint(url: str, admin: str | None = None) -> str:
    """What must never change: a file's bytes; a PostgreSQL database's tables and every row (read
    through ``admin``, the server's superuser URL)."""
    if url_scheme(url) != "postgresql":
        return hashlib.sha256(open(file_of_url(url), "rb").read()).hexdigest()
    import psycopg

    with psycopg.connect(with_database(admin, urllib.parse.urlsplit(url).path.lstrip("/"))) as conn:
        tables = [r[0] for r in conn.execute("SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = "
                                             "c.relnamespace WHERE nspname = 'public' ORDER BY relname")]
        rows = [conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables if t in ("item", "category")]
    return hashlib.sha256(repr((tables, rows)).encode()).hexdigest()


# ---------------------------------------------------------------------------- naming by URL

def test_url_forms():
    assert is_url("postgresql://u@h/db") and is_url("duckdb:///x.duckdb") and not is_url("/tmp/x.sqlite")
    assert url_scheme("postgres://u@h/db") == "postgresql" == url_scheme("postgresql+psycopg://u@h/db")
    assert file_of_url("sqlite:///rel/x.sqlite") == "rel/x.sqlite"
    assert file_of_url("duckdb:////abs/x.duckdb") == "/abs/x.duckdb"
    with pytest.raises(DataError, match="three slashes"):
        file_of_url("sqlite://x.sqlite")
    assert database_id("postgresql://u@h/shop") == ("shop", "postgresql://u@h/shop")
    assert database_id("mine=duckdb:///d/x.duckdb") == ("mine", "duckdb:///d/x.duckdb")
    assert database_id("/d/concert.sqlite") == ("concert", "sqlite:////d/concert.sqlite")
    assert url_for("duckdb:///dbs/{db_id}.duckdb", "farm") == "duckdb:///dbs/farm.duckdb"
    with pytest.raises(DataError, match=r"\{db_id\}"):
        url_for("duckdb:///dbs/x.duckdb", "farm")


def test_unknown_scheme_lists_the_registered_ones():
    with pytest.raises(DataError, match="unknown database scheme 'mysql'; registered: duckdb, postgresql, sqlite"):
        open_database("mysql://u@h/db")


def test_bare_path_means_sqlite(source):
    db = open_database(str(source))
    assert db.dialect == "sqlite" and db.execute("SELECT count(*) FROM item").rows == [(500,)]


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="no such DuckDB file"):
        open_database(f"duckdb:///{tmp_path}/absent.duckdb")


def test_unreachable_server_is_an_error_that_names_it():
    db = open_database("postgresql://nobody@/nodb?host=/nonexistent-socket-dir")
    res = db.execute("SELECT 1")
    assert not res.ok and "cannot connect" in res.error


# ---------------------------------------------------------------------------- the four duties

def test_introspects_tables_columns_and_keys(url, source):
    schema = open_database(url).schema()
    names = sorted(t.name.lower() for t in schema.tables)
    assert names == ["category", "item"]
    item = schema.table("item")
    assert [c.name.lower() for c in item.columns] == ["id", "name", "price", "qty", "cat_id"]
    assert [c.type for c in item.columns] == ["number", "text", "number", "number", "number"]
    assert [k.lower() for k in item.primary_keys] == ["id"]
    assert [(f.table.lower(), f.column.lower(), f.ref_table.lower(), f.ref_column.lower())
            for f in schema.foreign_keys] == [("item", "cat_id", "category", "cat_id")]


def test_cell_values_for_the_linker(url):
    from vantage_core.data.linking import cased_values, column_values

    db = open_database(url)
    assert cased_values(url)["item7"] == "Item7" and cased_values(url)["garden"] == "Garden"
    values = column_values(url, db.schema(), per_column=3)
    assert len(values[("item", "name")]) == 3  # capped per column
    assert values[("category", "name")] == {"tools", "garden"}


QUERIES = [  # SQLite SQL as the model writes it, with what SQLite means by it
    'SELECT name FROM item WHERE name = "Item3"',  # a double-quoted string
    "SELECT count(*) FROM item WHERE name LIKE 'item1%'",  # LIKE ignores case
    "SELECT id, qty / 2, id / 3 FROM item WHERE id < 8",  # integer division
    "SELECT T2.Name, count(*) FROM item AS T1 JOIN category AS T2 ON T1.cat_id = T2.cat_id GROUP BY T1.cat_id",
    "SELECT name, max(price) FROM item",  # a bare column beside max(): the row of the max
    "SELECT avg(price), sum(qty) FROM item",
    "SELECT name FROM item ORDER BY price DESC LIMIT 3",
    "SELECT qty, count(*) FROM item GROUP BY qty ORDER BY count(*) DESC LIMIT 1",  # a tie: SQLite's pick
    "SELECT Name FROM Category WHERE code = 10",  # a text column beside a number: compared as text
    "SELECT Name FROM Category WHERE code IN (10, 30)",
    "SELECT T1.name FROM item AS T1 JOIN Category AS T2 ON T2.code = T1.id",  # text column = number column
    "SELECT sum(code) FROM Category",  # text summed as the numbers it spells
    "SELECT count(*) FROM item WHERE price > 'cheap'",  # a number beside a word: numbers sort first
    "SELECT count(*) FROM item WHERE 'cheap' > price",
    "SELECT count(*) FROM item WHERE qty = 1 AND 'yes'",  # a word as a truth value is false
]


@pytest.mark.parametrize("sql", QUERIES)
def test_dialect_round_trip_returns_sqlites_rows(url, source, sql):
    from vantage_core.evaluate import spider
    from vantage_core.sql.sandbox import execute

    want = execute(str(source), sql)
    got = open_database(url).execute(sql)
    assert isinstance(got, DialectResult) and got.sql == sql and got.transpiled
    assert got.ok, f"{got.transpiled}: {got.error}"
    assert spider.results_equal(want.rows, got.rows, "order by" in sql.lower()), (got.transpiled, want.rows, got.rows)


def test_transpiled_sql_is_the_engines(pg_db, duck_url):
    pg = open_database(pg_db).execute('SELECT Name FROM Category WHERE Name = "Tools"')
    assert pg.ok and pg.rows == [("Tools",)] and pg.transpiled == \
        """SELECT "name" FROM "category" WHERE "name" = 'Tools'""" and pg.dialect == "postgres"
    duck = open_database(duck_url).execute("SELECT name FROM item WHERE name LIKE 'item1'")
    assert duck.ok and "ILIKE" in duck.transpiled and duck.dialect == "duckdb"


def test_engine_check_catches_what_sqlglot_lets_through(url):
    res = open_database(url).execute("SELECT no_such_column FROM item")
    assert not res.ok and "no_such_column" in res.error.lower()


def test_row_and_byte_caps(url):
    db = open_database(url)
    res = db.execute("SELECT * FROM item a, item b", TIMEOUT, max_rows=100)
    assert res.ok and res.truncated and len(res.rows) == 100
    res = db.execute("SELECT a.name FROM item a, item b", TIMEOUT, max_rows=10**6, max_result_bytes=10_000)
    assert res.ok and res.truncated and len(res.rows) < 1000


def test_digest_compares_cut_results_in_full(url, source):
    from vantage_core.sql.sandbox import execute

    sql = "SELECT id, name FROM item"
    a = execute(str(source), sql, max_rows=10, digest=True)
    b = open_database(url).execute(sql, max_rows=10, digest=True)
    assert a.truncated and b.truncated and (a.n_rows, a.digest) == (b.n_rows, b.digest)


# ---------------------------------------------------------------------------- the hostile battery

HOSTILE = {
    "drop": "DROP TABLE item",
    "delete": "DELETE FROM item",
    "update": "UPDATE item SET price = 0",
    "insert": "INSERT INTO item VALUES (9999, 'x', 1, 1, 1)",
    "create": "CREATE TABLE t (a)",
    "attach": "ATTACH DATABASE ':memory:' AS other",
    "second_statement": "SELECT 1; DROP TABLE item",
    "recursive_cte": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "cross_join": "SELECT count(*) FROM item a, item b, item c, item d",
    "randomblob": "SELECT randomblob(1000000000)",
    "repeat": "SELECT length(repeat('x', 1000000000))",
    # the engines' own ways out of the data
    "copy_to": "COPY item TO '/tmp/vantage-pwned.csv'",
    "copy_program": "COPY (SELECT 1) TO PROGRAM 'touch /tmp/vantage-pwned'",
    "pg_read_file": "SELECT pg_read_file('/etc/passwd')",
    "lo_import": "SELECT lo_import('/etc/passwd')",
    "set_config": "SELECT set_config('default_transaction_read_only', 'off', false)",
    "query_to_xml": "SELECT query_to_xml('DELETE FROM item', true, true, '')",
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "install": "INSTALL httpfs",
    "set_memory": "SET memory_limit = '100GB'",
    "pragma": "PRAGMA writable_schema = ON",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_query_is_refused_or_stopped(request, url, name):
    db = open_database(url)
    admin = request.getfixturevalue("pg_server") if url_scheme(url) == "postgresql" else None
    before = fingerprint(url, admin)
    res = db.execute(HOSTILE[name], TIMEOUT)
    assert not res.ok, f"{name} ran on {url_scheme(url)}: {res.rows[:3]}"
    assert res.error
    if name in ("recursive_cte", "cross_join"):  # stopped by the engine's own deadline or memory cap
        assert res.timed_out or "memory" in res.error.lower(), res.error
    assert fingerprint(url, admin) == before, f"{name} changed the database"
    assert not os.path.exists("/tmp/vantage-pwned") and not os.path.exists("/tmp/vantage-pwned.csv")
    assert db.execute("SELECT count(*) FROM item", TIMEOUT).rows == [(500,)]  # still serving


def test_postgresql_session_stays_read_only(pg_db):
    db = open_database(pg_db)
    res = db.execute("SELECT current_setting('transaction_read_only')")
    assert not res.ok  # refused by name before it runs
    import psycopg

    with psycopg.connect(pg_db) as conn:  # the reader role itself cannot write, whatever the connector does
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM item")


def test_postgresql_non_finite_numerics_come_back_as_floats(pg_db):
    """PostgreSQL's numeric 'Infinity' and 'NaN' come back as Python floats, as SQLite gives its
    own infinities, not as an error while the rows are read."""
    res = open_database(pg_db).execute(
        "SELECT CAST('Infinity' AS NUMERIC), CAST('-Infinity' AS NUMERIC), CAST('NaN' AS NUMERIC), CAST(2.5 AS NUMERIC)")
    assert res.ok, res.error
    (inf, minus_inf, nan, two_and_a_half), = res.rows
    assert inf == float("inf") and minus_inf == float("-inf") and nan != nan and two_and_a_half == 2.5


def admin_of(reader_url: str, server_url: str) -> str:
    """The superuser's URL for the database a reader's URL names."""
    return with_database(server_url, urllib.parse.urlsplit(reader_url).path.lstrip("/"))


def test_postgresql_refuses_a_superuser_unless_allowed(pg_db, pg_server, monkeypatch):
    from vantage_core.sql.database import ALLOW_PRIVILEGED_ENV
    from vantage_core.plugins import registry

    admin = admin_of(pg_db, pg_server)
    monkeypatch.delenv(ALLOW_PRIVILEGED_ENV, raising=False)
    res = registry().build("database", "postgresql", admin).execute("SELECT count(*) FROM item")
    assert not res.ok and "can do more than read (superuser" in res.error, res.error
    assert "vantage data load-into URL --from FILE.sqlite --reader ROLE" in res.error and "--allow-privileged" in res.error
    with pytest.raises(DataError, match="superuser"):  # reading the schema is refused the same way
        registry().build("database", "postgresql", admin).schema()
    monkeypatch.setenv(ALLOW_PRIVILEGED_ENV, "1")  # what --allow-privileged sets
    assert registry().build("database", "postgresql", admin).execute("SELECT count(*) FROM item").rows == [(500,)]


def test_postgresql_refuses_a_role_that_can_write_one_table(pg_db, pg_server, monkeypatch):
    import psycopg

    from vantage_core.sql.database import ALLOW_PRIVILEGED_ENV
    from vantage_core.plugins import registry

    monkeypatch.delenv(ALLOW_PRIVILEGED_ENV, raising=False)
    with psycopg.connect(admin_of(pg_db, pg_server), autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS vantage_test_writer")
        admin.execute("CREATE ROLE vantage_test_writer LOGIN")
        admin.execute("GRANT SELECT, INSERT ON item TO vantage_test_writer")
        try:
            db = registry().build("database", "postgresql", as_role(pg_db, "vantage_test_writer"))
            res = db.execute("SELECT count(*) FROM item")
            db.close()
        finally:
            admin.execute("REVOKE ALL ON item FROM vantage_test_writer")
            admin.execute("DROP ROLE vantage_test_writer")
    assert not res.ok and "INSERT, UPDATE, DELETE or TRUNCATE on item" in res.error, res.error


def test_postgresql_session_is_reset_after_each_request(pg_db, pg_server):
    """A session-level advisory lock taken by SQL that reached the server (here through the
    connector's inner runner, past the allow list) is gone once the request ends."""
    import psycopg

    db = open_database(pg_db)
    res = db._run("SELECT pg_advisory_lock(4242)", TIMEOUT, 10, 1 << 20, False)
    assert res.ok, res.error
    with psycopg.connect(admin_of(pg_db, pg_server)) as admin:
        held = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()[0]
    assert held == 0
    assert db.execute("SELECT count(*) FROM item", TIMEOUT).rows == [(500,)]


# ---------------------------------------------------------------------------- the engine and the CLI

def test_engine_reads_schema_and_runs_sql_by_url(url, source):
    from types import SimpleNamespace

    from vantage_core.config import Config
    from vantage_core.inference.engine import Engine

    engine = Engine(SimpleNamespace(args=None), None, Config())
    assert sorted(t.name.lower() for t in engine.schema_of(url).tables) == ["category", "item"]
    res = engine._execute(url, "SELECT count(*) FROM item WHERE name LIKE 'item1%'")
    assert res.ok and res.rows == [(111,)]
    assert engine._execute(str(source), "SELECT count(*) FROM item").rows == [(500,)]  # a path still works


def test_load_into_cli_and_errors(tmp_path, source):
    from click.testing import CliRunner

    from vantage_core.cli import cli as main

    target = f"duckdb:///{tmp_path / 'copy.duckdb'}"
    result = CliRunner().invoke(main, ["data", "load-into", target, "--from", str(source)])
    assert result.exit_code == 0, result.output
    assert "2 tables, 502 rows, 3 keys" in result.output
    again = CliRunner().invoke(main, ["data", "load-into", target, "--from", str(source)])
    assert again.exit_code != 0 and "already exists" in str(again.exception or again.output)
    assert CliRunner().invoke(main, ["data", "load-into", target, "--from", str(source), "--replace"]).exit_code == 0
    bad = CliRunner().invoke(main, ["data", "load-into", "mysql://u@h/db", "--from", str(source)])
    assert bad.exit_code != 0 and "registered: duckdb, postgresql, sqlite" in str(bad.exception or bad.output)


def test_serve_lists_databases_given_by_url(duck_url, source):
    from vantage_core.inference.serve import find_databases

    found = find_databases([], [duck_url, f"other={source}"])
    assert found == {"shop": duck_url, "other": str(source)}
    with pytest.raises(DataError, match="already given"):
        find_databases([], [duck_url, duck_url])


def test_execute_on_template_rewrites_the_databases():
    from vantage_core.cli.evaluate import on_engine
    from vantage_core.data.example import Example
    from vantage_core.sql.schema import Schema

    ex = Example(question="q", sql="SELECT 1", db_id="farm", schema=Schema("farm", []), db_paths=["/x/farm.sqlite"])
    assert on_engine([ex], "postgresql://u@/{db_id}?host=/tmp")[0].db_paths == ["postgresql://u@/farm?host=/tmp"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from infer_fixture import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("dbmodel") / "model")


@pytest.mark.slow
def test_generate_takes_a_database_url(model_dir, duck_url):
    import json

    from click.testing import CliRunner

    from vantage_core.cli import cli

    result = CliRunner().invoke(cli, ["generate", "-m", str(model_dir), "--db", duck_url, "how many items?",
                                      "--run", "--json", "--decoding", "greedy", "--max-new-tokens", "8"])
    assert result.exit_code in (0, 1), result.output  # 1: the untrained model's SQL did not run
    reply = json.loads(result.output.strip().splitlines()[-1])
    assert reply["dialect"] == "duckdb" and reply["sql"] is not None
    bad = CliRunner().invoke(cli, ["generate", "-m", str(model_dir), "--db", "/nonexistent.sqlite", "q"])
    assert bad.exit_code == 2 and "no such SQLite file; give a SQLite file or a database URL" in bad.output


@pytest.mark.slow
def test_generate_refuses_a_superuser_url_unless_allow_privileged(model_dir, pg_db, pg_server, monkeypatch, capsys):
    import json

    from test_cli_errors import assert_one_error_line, run_cli
    from vantage_core.sql.database import ALLOW_PRIVILEGED_ENV

    monkeypatch.setenv(ALLOW_PRIVILEGED_ENV, "0")  # restored after the test (--allow-privileged sets it)
    args = ["generate", "-m", str(model_dir), "--db", admin_of(pg_db, pg_server), "how many items?", "--run",
            "--json", "--decoding", "greedy", "--max-new-tokens", "8"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert_one_error_line(err, "can do more than read (superuser",
                          "vantage data load-into URL --from FILE.sqlite --reader ROLE", "--allow-privileged")
    code, out, err = run_cli(args + ["--allow-privileged"], capsys)
    assert code in (0, 1), err  # 1: the untrained model's SQL did not run
    assert json.loads(out.strip().splitlines()[-1])["dialect"] == "postgres"


@pytest.mark.slow
def test_serve_answers_over_a_database_url(model_dir, duck_url):
    from fastapi.testclient import TestClient

    from vantage_core.inference.serve import ServeSettings, create_app

    client = TestClient(create_app(str(model_dir), ServeSettings(db_urls=[duck_url])))
    assert client.get("/v1/databases").json() == ["shop"]
    schema = client.get("/v1/databases/shop/schema").json()
    assert sorted(t["name"].lower() for t in schema["tables"]) == ["category", "item"]
    reply = client.post("/v1/generate", json={"question": "how many items?", "db_id": "shop", "run": True,
                                              "decoding": "greedy", "max_new_tokens": 8})
    assert reply.status_code == 200, reply.text
    assert reply.json()["dialect"] == "duckdb"


@pytest.mark.parametrize("name", ["odd?name.sqlite", "100%.sqlite", "a b#c.sqlite"])
def test_a_bare_path_names_its_file_whatever_its_characters(tmp_path, name):
    """A SQLite file given as a plain path opens that file, even when its name holds characters
    that mean something in a URL (``?``, ``%``, ``#``)."""
    path = tmp_path / name
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE shelf (book TEXT)")
    con.execute("INSERT INTO shelf VALUES ('Dune')")
    con.commit()
    con.close()
    db = open_database(str(path))
    assert [t.name for t in db.schema().tables] == ["shelf"]
    assert db.execute("SELECT book FROM shelf").rows == [("Dune",)]
    assert database_id(str(path))[0] == path.stem
