"""The DuckDB connector runs every query in a worker process with an address-space cap, DuckDB's
own memory limit, one thread and a locked configuration; the worker is killed at the deadline when
DuckDB's interrupt does not stop a query; concurrent callers get their own rows.

Some tests call the connector's ``_run`` (the statement as it reaches the worker, past the allow
lists of ``transpile``) to test the worker's own limits with queries the allow lists would refuse.
Times come from the sandbox's monotonic clock (``ExecutionResult.elapsed``); no test sleeps."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from vantage_core.errors import DataError
from vantage_core.sql.sandbox import Sandbox
from vantage_plugins.databases.duckdb import GRACE_S, HEADROOM, DuckDBDatabase, DuckDBRunner, memory_bytes

LIMIT = "256MB"
# one call of repeat() builds its string without checking DuckDB's interrupt (seconds on any CPU)
UNINTERRUPTIBLE = "SELECT length(repeat('a', 400000000))"


def make_duckdb(folder, rows: int = 500) -> str:
    """A DuckDB file loaded from a small SQLite shop (``item``: ``rows`` rows); its URL."""
    from vantage_core.data.load_into import load_into

    source = folder / "shop.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(rows)])
    conn.commit()
    conn.close()
    url = f"duckdb:///{folder / 'shop.duckdb'}"
    load_into(url, source)
    return url


@pytest.fixture()
def db(tmp_path):
    database = DuckDBDatabase(make_duckdb(tmp_path), memory_limit=LIMIT)
    assert database.execute("SELECT count(*) FROM item").rows == [(500,)]  # the worker is up
    yield database
    database.close()


def _address_space_cap(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(x for x in f if x.startswith("Max address space"))
    return int(line.split()[3])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_queries_run_in_a_worker_with_an_address_space_cap(db):
    """The query runs in another process, whose address space is capped at its size once DuckDB
    is loaded plus the memory limit plus the headroom."""
    pid = db.sandbox.pids[0]
    assert pid != os.getpid()
    cap = _address_space_cap(pid)
    with open(f"/proc/{pid}/status") as f:
        size = next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmSize:"))
    assert size < cap <= size + memory_bytes(LIMIT) + HEADROOM + (256 << 20)


def test_worker_settings_are_locked_down(db):
    """DuckDB's own layer: external access and extension autoloading off, no temporary directory,
    one thread, the memory limit; and no query can SET them back."""
    rows = db._run("SELECT current_setting('enable_external_access'), current_setting('autoload_known_extensions'), "
                   "current_setting('autoinstall_known_extensions'), current_setting('lock_configuration'), "
                   "current_setting('temp_directory'), current_setting('threads')", 5.0, 10, 1 << 20, False)
    assert rows.rows == [(False, False, False, True, "", 1)]
    limit = db._run("SELECT current_setting('memory_limit')", 5.0, 10, 1 << 20, False).rows[0][0]
    assert limit.endswith("MiB") and float(limit.split()[0]) < 256
    for statement in ("SET memory_limit = '100GB'", "SET enable_external_access = true", "SET threads = 8"):
        res = db._run(statement, 5.0, 10, 1 << 20, False)
        assert not res.ok and "configuration has been locked" in res.error, (statement, res.error)


def test_a_query_past_its_deadline_is_killed_within_the_grace(db):
    """A query DuckDB's interrupt cannot stop is ended by killing its worker GRACE_S after the
    deadline (not when the query finishes); a fresh worker serves the next query."""
    pids, restarts = db.sandbox.pids, db.sandbox.restarts
    timeout = 0.3
    res = db._run(UNINTERRUPTIBLE, timeout, 10, 1 << 20, False)
    assert not res.ok and res.timed_out and "hard limit" in res.error, res.error
    assert timeout + GRACE_S <= res.elapsed < timeout + GRACE_S + 0.5, res.elapsed
    assert len(pids) == 1 and not _alive(pids[0]) and db.sandbox.restarts == restarts + 1
    assert db.execute("SELECT count(*) FROM item").rows == [(500,)]


def test_an_interruptible_query_stops_at_its_deadline_without_a_kill(db):
    """A long join is interrupted by DuckDB itself at the deadline: no worker is killed."""
    restarts = db.sandbox.restarts
    res = db.execute("SELECT count(*) FROM item a, item b, item c, item d", 0.3)
    assert not res.ok and res.timed_out and "hard limit" not in res.error, res.error
    assert res.elapsed < 0.3 + GRACE_S
    assert db.sandbox.restarts == restarts


def test_memory_outside_duckdbs_buffers_is_capped(db):
    """A 2.4 GB list (``list_sum(range(3e8))``) is not built: the worker's cap refuses it, its peak
    memory stays under DuckDB's own limit, and the next query works."""
    res = db._run("SELECT list_sum(range(300000000))", 10.0, 10, 1 << 20, False)
    assert not res.ok and "out of memory" in res.error.lower(), res.error
    assert res.peak_bytes is not None and res.peak_bytes < memory_bytes(LIMIT), res.peak_bytes
    assert db.execute("SELECT count(*) FROM item").rows == [(500,)]


def test_a_grown_worker_retires_before_it_fails_an_ordinary_query(db):
    """A 100 MB string leaves the allocator holding address space; past ``retire_bytes`` the
    worker says so and exits after its answer, and the next query gets a fresh worker (not an
    out-of-memory error)."""
    box = Sandbox(mem_bytes=memory_bytes(LIMIT) + HEADROOM, grace_s=GRACE_S, runner=DuckDBRunner(LIMIT),
                  retire_bytes=64 << 20)
    with box:
        res = box.execute(db.path, "SELECT strlen(repeat(repeat('a', 100000), 1000))", 30.0)
        assert res.ok and res.rows == [(100_000_000,)], res.error
        assert box.retired == 1 and box.process is None
        assert box.execute(db.path, "SELECT count(*) FROM item").rows == [(500,)]
        assert box.restarts == 0 and box.retired == 1


def test_concurrent_callers_get_their_own_rows(tmp_path):
    """Eight threads over two connectors, each query asking for its own number: every answer is
    the one its query asked for."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    dbs = [DuckDBDatabase(make_duckdb(tmp_path / "a", 300)), DuckDBDatabase(make_duckdb(tmp_path / "b", 700))]
    wrong, barrier = [], threading.Barrier(8)

    def work(t: int) -> None:
        barrier.wait()
        for i in range(20):
            k = t * 100 + i
            db = dbs[(t + i) % 2]
            rows = db.execute(f"SELECT {k}, count(*) FROM item WHERE id < {k}").rows
            n = 300 if db is dbs[0] else 700
            if rows != [(k, min(k, n))]:
                wrong.append((k, rows))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    try:
        assert not any(th.is_alive() for th in threads) and wrong == []
    finally:
        for db in dbs:
            db.close()


def test_a_replaced_file_is_read_afresh(tmp_path):
    """The worker reopens a file replaced on disk instead of reading the old one."""
    (tmp_path / "old").mkdir()
    (tmp_path / "new").mkdir()
    url = make_duckdb(tmp_path / "old", 100)
    db = DuckDBDatabase(url)
    try:
        assert db.execute("SELECT count(*) FROM item").rows == [(100,)]
        fresh = make_duckdb(tmp_path / "new", 200)
        os.replace(fresh.split(":///", 1)[1], url.split(":///", 1)[1])
        assert db.execute("SELECT count(*) FROM item").rows == [(200,)]
    finally:
        db.close()


def test_a_bad_memory_limit_is_one_clear_error(tmp_path):
    url = make_duckdb(tmp_path, 10)
    with pytest.raises(DataError, match=r"duckdb memory_limit 'lots': give a positive size such as 512MB"):
        DuckDBDatabase(url, memory_limit="lots")
    assert memory_bytes("1GB") == 10**9 and memory_bytes("512MiB") == 512 << 20


def test_connectors_share_a_bounded_pool_of_workers(tmp_path):
    """Twelve DuckDB files opened side by side start one worker between them (queries taken in
    turn), not one each; each query still reads its own file."""
    connectors = []
    for i in range(12):
        folder = tmp_path / f"db{i}"
        folder.mkdir()
        connectors.append(DuckDBDatabase(make_duckdb(folder, rows=i + 1), memory_limit="200MB"))
    for i, database in enumerate(connectors):
        assert database.execute("SELECT count(*) FROM item").rows == [(i + 1,)]
    pool = connectors[0].sandbox
    assert all(c.sandbox is pool for c in connectors) and len(pool.pids) == 1
