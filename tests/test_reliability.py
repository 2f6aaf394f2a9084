"""Reliability under hostile use: the sandbox under concurrent callers, scores that
count every example and compare complete results, and one clean error for bad files."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from vantage_core.data.example import Example
from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.sql.sandbox import Sandbox, SandboxPool, execute, execute_unisolated
from vantage_core.evaluate.runner import evaluate_predictions

THREADS, QUERIES = 4, 40
RUN_LIMIT_S = 60  # the whole concurrent run must finish well inside this (it takes ~2 s)


def _make_db(path, table: str, n: int):
    conn = sqlite3.connect(path)
    conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, label TEXT)")
    conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(i, f"{table}-{i}") for i in range(n)])
    conn.commit()
    conn.close()
    return path


@pytest.fixture()
def databases(tmp_path):
    """Four databases, each with its own table name and row count."""
    return {f"t{k}": (str(_make_db(tmp_path / f"db{k}.sqlite", f"t{k}", 10 + k)), 10 + k) for k in range(THREADS)}


def _hammer(run, databases) -> list[str]:
    """Each thread runs QUERIES queries on its own database; every answer is checked against the
    query that asked it (the query's own number and table come back in the row)."""
    problems: list[str] = []

    def worker(table: str) -> None:
        db, n = databases[table]
        for i in range(QUERIES):
            if i % 5 == 4:  # an error must come back to its own caller too
                result = run(db, f"SELECT nope_{table}_{i} FROM {table}")
                if result.ok or f"nope_{table}_{i}" not in (result.error or ""):
                    problems.append(f"{table} query {i}: got {result.error!r}")
                continue
            result = run(db, f"SELECT '{table}', {i}, count(*), max(label) FROM {table}")
            expected = [(table, i, n, max(f"{table}-{j}" for j in range(n)))]
            if not result.ok or result.rows != expected:
                problems.append(f"{table} query {i}: got {result.rows or result.error!r}")

    with ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, table) for table in databases]
        for f in futures:
            f.result(timeout=RUN_LIMIT_S)  # a hang fails here instead of stalling the suite
    return problems


def test_one_shared_sandbox_never_mixes_answers_between_threads(databases):
    """Failure 1: threads sharing one worker received each other's rows, or hung."""
    with Sandbox() as box:
        assert _hammer(lambda db, sql: box.execute(db, sql, 5.0), databases) == []
        assert box.restarts == 0


def test_the_module_pool_never_mixes_answers_between_threads(databases):
    assert _hammer(lambda db, sql: execute(db, sql, 5.0), databases) == []


def test_a_pool_runs_at_most_size_workers(databases):
    with SandboxPool(size=2) as pool:
        assert _hammer(lambda db, sql: pool.execute(db, sql, 5.0), databases) == []
        assert len(pool._all) <= 2 and pool.restarts == 0


def test_unisolated_runner_is_per_thread(databases):
    assert _hammer(lambda db, sql: execute_unisolated(db, sql, 5.0), databases) == []


# ---------------------------------------------------------------------------- result caps

@pytest.fixture()
def big_db(tmp_path):
    path = tmp_path / "big.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE r (id INTEGER PRIMARY KEY, v INTEGER)")
    conn.executemany("INSERT INTO r VALUES (?, ?)", [(i, i) for i in range(20000)])
    conn.execute("CREATE TABLE b (id INTEGER PRIMARY KEY, blob BLOB)")
    conn.commit()
    conn.close()
    return path


def _example(db, sql: str) -> Example:
    schema = Schema("big", [Table("r", [Column("id", "number"), Column("v", "number")])])
    return Example("q", sql, "big", schema, [str(db)], source="spider")


def test_rows_past_the_cap_still_decide_the_score(big_db):
    """Failure 3: both results cut at 10,000 rows made a prediction that differs after row
    15,000 of a 20,000-row gold score 1."""
    gold = "SELECT v FROM r"
    cases = {
        "differs after row 15000": ("SELECT CASE WHEN id > 15000 THEN -v ELSE v END FROM r", 0),
        "same rows": ("SELECT v FROM r", 1),
        "same rows, another order": ("SELECT v FROM r ORDER BY id DESC", 1),
        "the first 10000 rows only": ("SELECT v FROM r LIMIT 10000", 0),
        "one row short": ("SELECT v FROM r WHERE id > 0", 0),
    }
    examples = [_example(big_db, gold) for _ in cases]
    result = evaluate_predictions(examples, [p for p, _ in cases.values()], ["execution"])
    got = {name: row["execution"]["exec"] for name, row in zip(cases, result["scores"])}
    assert got == {name: want for name, (_, want) in cases.items()}


def test_a_cut_result_is_never_equal_to_a_complete_one(big_db):
    from vantage_core.sql.result import same_result
    from vantage_core.evaluate.spider import results_equal

    with Sandbox() as box:
        cut = box.execute(str(big_db), "SELECT v FROM r", max_rows=100, digest=True)
        complete = box.execute(str(big_db), "SELECT v FROM r LIMIT 100", max_rows=100)
        cut_again = box.execute(str(big_db), "SELECT v FROM r", max_rows=100, digest=True)
        cut_without_digest = box.execute(str(big_db), "SELECT v FROM r", max_rows=100)
    assert cut.truncated and cut.n_rows == 20000 and not complete.truncated
    assert cut.rows == complete.rows  # the same first rows ...
    assert not same_result(cut, complete, False, results_equal)  # ... but not the same result
    assert not same_result(complete, cut, False, results_equal)
    assert same_result(cut, cut_again, True, results_equal)
    assert not same_result(cut, cut_without_digest, False, results_equal)  # no digest: never equal


def test_result_bytes_are_capped_not_only_rows(big_db):
    """Failure 9: six rows of 99 MB blobs brought ~600 MB back into the parent."""
    with Sandbox(result_bytes=4 << 20) as box:
        result = box.execute(str(big_db), "SELECT zeroblob(3000000) FROM r LIMIT 6", 5.0)
    assert result.ok and result.truncated
    assert len(result.rows) == 1 and sum(len(r[0]) for r in result.rows) <= 4 << 20


# ---------------------------------------------------------------------------- small ones

def test_read_only_pragma_functions_run(big_db):
    """Failure 9: pragma_table_info(...) was refused though it only reads."""
    with Sandbox() as box:
        info = box.execute(str(big_db), "SELECT name FROM pragma_table_info('r') ORDER BY cid")
        tables = box.execute(str(big_db), "SELECT count(*) FROM pragma_table_list WHERE name = 'r'")
        writer = box.execute(str(big_db), "SELECT * FROM pragma_journal_mode('wal')")
        where = box.execute(str(big_db), "SELECT file FROM pragma_database_list")
    assert info.ok and info.rows == [("id",), ("v",)], info.error
    assert tables.ok and tables.rows == [(1,)], tables.error
    assert not writer.ok and not where.ok  # a pragma that writes, or that names the server's path


def test_missing_database_error_names_no_server_folder(tmp_path):
    """Failure 9: an error message exposed the server's absolute database path."""
    result = execute(str(tmp_path / "secret" / "gone.sqlite"), "SELECT 1")
    assert not result.ok and "gone.sqlite" in result.error
    assert str(tmp_path) not in result.error


def test_unscorable_predictions_count_as_wrong(big_db):
    """Failure 2: predictions sqlparse cannot split scored None and left the denominator
    (37 right + 3 unscorable reported 100% of 37; the right figure is 92.5% of 40)."""
    hostile = ["SELECT " + "+".join(["1"] * 6000),
               "SELECT " + "(" * 10000 + "1" + ")" * 10000,
               " UNION ".join(["SELECT 1"] * 5000)]
    examples = [_example(big_db, f"SELECT v FROM r WHERE id = {i}") for i in range(40)]
    predictions = [f"SELECT v FROM r WHERE id = {i}" for i in range(37)] + hostile
    result = evaluate_predictions(examples, predictions, ["execution"])
    summary = result["summary"]["execution"]
    assert summary["n"] == 40 and summary["execution"] == pytest.approx(37 / 40)
    for row in result["scores"][37:]:
        assert row["execution"]["exec"] == 0 and "cannot be split" in row["execution"]["error"]


def test_many_threads_share_the_module_pool_from_a_cold_start(databases):
    """The pool itself is created once even when many threads make the first call together."""
    import vantage_core.sql.sandbox as sandbox

    sandbox._default = None
    start = threading.Barrier(THREADS)
    seen: list[int] = []

    def first_call():
        start.wait(timeout=10)
        seen.append(id(sandbox.default_sandbox()))

    threads = [threading.Thread(target=first_call) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(seen) == THREADS and len(set(seen)) == 1
