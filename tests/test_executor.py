"""The sandboxed executor: reads work; hostile predictions end in an error or a time-out
within their limit, and leave every database byte-identical. No test reads the wall clock:
"within the limit" means SQLite's own limits stopped the query, not the parent's hard kill."""

import hashlib
import sqlite3
import sys

import pytest

from vantage_core.evaluate.executor import Sandbox, execute, execute_unisolated

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
