"""The sandboxed executor: reads work; hostile predictions end in an error or a time-out
within their limit, and leave every database byte-identical. No test reads the wall clock:
"within the limit" means SQLite's own limits stopped the query, not the parent's hard kill."""

import hashlib
import sqlite3
import sys

import pytest

from vantage_core.sql.sandbox import Sandbox, execute, execute_unisolated

TIMEOUT = 1.0
GRACE = 2.0


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(500)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(grace_s=GRACE)
    yield box
    box.close()


def test_reads_rows(db, sandbox):
    result = sandbox.execute(str(db), "SELECT name FROM item WHERE id < 3 ORDER BY id", TIMEOUT)
    assert result.ok and result.rows == [("item0",), ("item1",), ("item2",)]
    assert not result.timed_out and result.error is None


HOSTILE = {
    "drop": "DROP TABLE item",
    "delete": "DELETE FROM item",
    "update": "UPDATE item SET price = 0",
    "insert": "INSERT INTO item VALUES (9999, 'x', 1)",
    "attach": "ATTACH DATABASE ':memory:' AS other",
    "writable_schema": "PRAGMA writable_schema = ON",
    "journal_mode": "PRAGMA journal_mode = WAL",
    "load_extension": "SELECT load_extension('/tmp/evil.so')",
    "create_temp": "CREATE TEMP TABLE t (a)",
    "vacuum": "VACUUM",
    "second_statement": "SELECT 1; DROP TABLE item",
    "recursive_cte": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "cross_join": "SELECT count(*) FROM item a, item b, item c, item d",
    "randomblob": "SELECT randomblob(1000000000)",
    "zeroblob": "SELECT length(zeroblob(1000000000))",
    "huge_string": "SELECT length(replace(hex(zeroblob(50000000)), '0', '00000'))",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_query_is_refused_or_stopped(db, sandbox, name):
    before = _digest(db)
    restarts = sandbox.restarts
    result = sandbox.execute(str(db), HOSTILE[name], TIMEOUT)
    assert not result.ok, f"{name} ran: {result.rows[:3]}"
    assert result.error
    # stopped inside the worker (refusal, limit, progress-handler deadline), never by the kill
    assert "hard limit" not in result.error and sandbox.restarts == restarts, result.error
    if name in ("recursive_cte", "cross_join"):
        assert result.timed_out and "timed out after" in result.error
    assert _digest(db) == before, f"{name} changed the database file"
    # the sandbox still serves the next query
    assert sandbox.execute(str(db), "SELECT count(*) FROM item", TIMEOUT).rows == [(500,)]


def test_wide_cross_join_is_capped_by_rows(db, sandbox):
    result = sandbox.execute(str(db), "SELECT * FROM item a, item b, item c", TIMEOUT, max_rows=100)
    assert result.ok and result.truncated and len(result.rows) == 100


def test_worker_that_hangs_is_killed(db, monkeypatch):
    """The hard limit: a worker that never answers is killed after timeout + grace."""
    box = Sandbox(grace_s=0.5)
    import subprocess

    def start_sleeper():
        box.process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    monkeypatch.setattr(box, "_start", start_sleeper)
    result = box.execute(str(db), "SELECT 1", timeout_s=0.5)
    assert result.timed_out and not result.ok and "killed after 1s (hard limit)" in result.error
    assert box.process is None and box.restarts == 1
    box.close()


def test_worker_that_dies_is_replaced(db):
    box = Sandbox()
    assert box.execute(str(db), "SELECT 1").rows == [(1,)]
    box.process.kill()
    box.process.wait()
    assert box.execute(str(db), "SELECT 2").rows == [(2,)]
    assert box.restarts == 1
    box.close()


def test_module_level_execute_and_unisolated(db):
    before = _digest(db)
    assert execute(str(db), "SELECT max(id) FROM item").rows == [(499,)]
    assert not execute_unisolated(str(db), "DELETE FROM item").ok
    assert execute_unisolated(str(db), "SELECT count(*) FROM item").rows == [(500,)]
    assert _digest(db) == before


def test_missing_database_and_non_query(tmp_path, sandbox):
    missing = sandbox.execute(str(tmp_path / "nope.sqlite"), "SELECT 1")
    assert not missing.ok and "no database file" in missing.error
    assert not (tmp_path / "nope.sqlite").exists()  # read-only open creates nothing


def test_empty_statement_is_not_a_result(db, sandbox):
    for sql in ("", ";", "-- just a comment"):
        result = sandbox.execute(str(db), sql)
        assert not result.ok, sql


def _wal_database(folder):
    """A WAL-mode database whose writer has closed (SQLite then removes its -wal and -shm)."""
    path = folder / "wal.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO item VALUES (?, ?)", [(i, f"item{i}") for i in range(50)])
    conn.commit()
    conn.close()
    assert sorted(p.name for p in folder.iterdir()) == ["wal.sqlite"]
    return path


def test_read_only_runs_on_a_wal_database_leave_no_files_beside_it(tmp_path):
    """Every read-only path (the sandbox, the unisolated runner, the connector's schema and cell
    values, the schema readers) leaves a WAL-mode database's folder as it found it: no -wal, no
    -shm, the same bytes."""
    from vantage_core.sql.sqlite_file import connect_readonly, schema_from_sqlite
    from vantage_core.sql.database import open_database
    from vantage_core.evaluate.spider import _schema_from_sqlite

    path = _wal_database(tmp_path)
    before = _digest(path)
    with Sandbox() as box:
        assert box.execute(str(path), "SELECT count(*) FROM item").rows == [(50,)]
    assert execute_unisolated(str(path), "SELECT count(*) FROM item").rows == [(50,)]
    db = open_database(f"sqlite:///{path}")
    assert [t.name for t in db.schema().tables] == ["item"] and len(db.cased_values()) == 50
    assert db.execute("SELECT max(id) FROM item").rows == [(49,)]
    assert [t.name for t in schema_from_sqlite(path).tables] == ["item"]
    assert "item" in _schema_from_sqlite(str(path)).tables
    conn = connect_readonly(path)
    assert conn.execute("SELECT count(*) FROM item").fetchone() == (50,)
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wal.sqlite"] and _digest(path) == before


def test_a_wal_database_being_written_is_read_through_its_writer(tmp_path):
    """While a writer holds rows in its -wal (not yet in the file), a read sees them, and a
    connection opened before the writer came sees its later commits too."""
    path = _wal_database(tmp_path)
    with Sandbox() as box:
        assert box.execute(str(path), "SELECT count(*) FROM item").rows == [(50,)]  # opened immutable
        writer = sqlite3.connect(path)
        writer.execute("PRAGMA wal_autocheckpoint=0")  # the new rows stay in the -wal
        writer.execute("INSERT INTO item VALUES (50, 'item50')")
        writer.commit()
        assert (tmp_path / "wal.sqlite-wal").exists()
        assert box.execute(str(path), "SELECT count(*) FROM item").rows == [(51,)]
        writer.execute("INSERT INTO item VALUES (51, 'item51')")
        writer.commit()
        assert box.execute(str(path), "SELECT count(*) FROM item").rows == [(52,)]
        writer.close()
