"""Hostile SQL through the DuckDB connector: every statement is refused, or stopped by the deadline
or the memory limits, and leaves the database file byte-identical, its folder without new files,
no file written elsewhere, and the connector serving the next query.

The memory bombs also run straight on the worker (``_run``: the statement as it reaches it, past
the allow lists that refuse several of them), so that the worker's own limits are tested: DuckDB's
``memory_limit`` and the address-space cap. The worker's peak resident memory is measured for every
statement that reached it, compared with DuckDB's memory limit, and printed (``pytest -s``)."""

from __future__ import annotations

import hashlib
import os
import sqlite3

import pytest

from vantage_plugins.databases.duckdb import HEADROOM, DuckDBDatabase, memory_bytes

DEADLINE = 0.5  # the time bombs' deadline: the battery runs in seconds
LIMIT = "128MB"  # DuckDB's memory limit: memory bombs reach it in about a second
PWNED = "/tmp/vantage-duckdb-pwned"

HOSTILE = {
    # reading files outside the database
    "read_csv": "SELECT * FROM read_csv('/etc/passwd')",
    "read_csv_auto": "SELECT * FROM read_csv_auto('/etc/passwd')",
    "read_text": "SELECT * FROM read_text('/etc/hostname')",
    "read_blob": "SELECT * FROM read_blob('/etc/hostname')",
    "read_parquet": "SELECT * FROM read_parquet('/tmp/x.parquet')",
    "read_json": "SELECT * FROM read_json('/etc/hostname')",
    "glob": "SELECT * FROM glob('/*')",
    "file_as_table": "SELECT * FROM '/etc/passwd'",
    "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
    # writing files
    "copy_to": f"COPY item TO '{PWNED}.csv'",
    "copy_query_to": f"COPY (SELECT 1) TO '{PWNED}.parquet' (FORMAT parquet)",
    "export_database": f"EXPORT DATABASE '{PWNED}'",
    # other databases and extensions
    "attach_memory": "ATTACH ':memory:' AS other",
    "attach_file": f"ATTACH '{PWNED}.duckdb' AS other",
    "detach": "DETACH shop",
    "use": "USE memory",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "force_install": "FORCE INSTALL json",
    # settings
    "set_memory_limit": "SET memory_limit = '100GB'",
    "set_external_access": "SET enable_external_access = true",
    "reset_all": "RESET ALL",
    "pragma_threads": "PRAGMA threads = 64",
    "pragma_database_list": "PRAGMA database_list",
    "set_variable": "SET VARIABLE x = 1",
    # what shows server paths or the environment
    "pragma_database_list_table": "SELECT * FROM pragma_database_list",
    "duckdb_databases": "SELECT * FROM duckdb_databases()",
    "duckdb_settings": "SELECT * FROM duckdb_settings()",
    "current_setting": "SELECT current_setting('temp_directory')",
    "duckdb_extensions": "SELECT * FROM duckdb_extensions()",
    "duckdb_temporary_files": "SELECT * FROM duckdb_temporary_files()",
    "duckdb_secrets": "SELECT * FROM duckdb_secrets()",
    "getenv": "SELECT getenv('HOME')",
    "information_schema": "SELECT * FROM information_schema.tables",
    "sqlite_master": "SELECT * FROM sqlite_master",
    # SQL inside a string
    "query": "SELECT * FROM query('SELECT 7')",
    "query_table": "SELECT * FROM query_table('item')",
    "json_execute_serialized_sql": "SELECT * FROM json_execute_serialized_sql(json_serialize_sql("
                                   "'SELECT * FROM query(''SELECT 7'')'))",
    "json_execute_serialized_sql_scalar": "SELECT json_execute_serialized_sql(json_serialize_sql("
                                          "'SELECT * FROM query(''SELECT 7'')'))",
    # memory bombs
    "list_sum_range": "SELECT list_sum(range(300000000))",
    "repeat_huge": "SELECT length(repeat('a', 900000000))",
    "repeat_nested": "SELECT length(repeat(repeat('a', 30000), 30000))",
    "range_table": "SELECT count(*) FROM range(1000000000000)",
    "group_concat_cross": "SELECT length(group_concat(a.name || b.name || c.name)) FROM item a, item b, item c",
    "group_by_cross": "SELECT a.id, b.id, c.id, count(*) FROM item a, item b, item c GROUP BY a.id, b.id, c.id "
                      "ORDER BY count(*) DESC LIMIT 1",
    "sort_cross": "SELECT a.name || b.name || c.name AS s FROM item a, item b, item c ORDER BY s",
    "doubling_cte": "WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) FROM r",
    # time bombs
    "recursive_cte": "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
    "cross_join_count": "SELECT count(*) FROM item a, item b, item c, item d",
    # writes
    "delete": "DELETE FROM item",
    "update": "UPDATE item SET price = 0",
    "insert": "INSERT INTO item VALUES (9999, 'x', 1.0)",
    "drop": "DROP TABLE item",
    "create_table": "CREATE TABLE t (a INTEGER)",
    "create_temp_table": "CREATE TEMP TABLE t AS SELECT * FROM item",
    "create_view": "CREATE VIEW v AS SELECT * FROM item",
    "create_macro": "CREATE MACRO m(a) AS a + 1",
    "create_secret": "CREATE SECRET s (TYPE s3, KEY_ID 'k', SECRET 's')",
    "checkpoint": "CHECKPOINT",
    "vacuum": "VACUUM",
    "second_statement": "SELECT 1; DROP TABLE item",
    "call": "CALL pragma_database_size()",
    "summarize": "SUMMARIZE item",
    "describe": "DESCRIBE item",
}
# stopped by the deadline or a memory limit when not refused before they run
BOMBS = {"group_concat_cross", "group_by_cross", "sort_cross", "doubling_cte", "recursive_cte", "cross_join_count",
         "repeat_nested", "list_sum_range", "repeat_huge", "range_table"}
# run on the worker itself with a deadline long enough to reach the memory limits
MEMORY_BOMBS = ["list_sum_range", "repeat_huge", "repeat_nested", "group_concat_cross", "group_by_cross",
                "sort_cross", "doubling_cte"]


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    """A DuckDB file of 500 items behind a connector with a 128 MB memory limit; the worker peaks
    seen, by statement, are printed at the end (``pytest -s``)."""
    from vantage_core.data.load_into import load_into

    folder = tmp_path_factory.mktemp("hostile")
    source = folder.parent / "hostile-source.sqlite"
    conn = sqlite3.connect(source)
    conn.execute("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    conn.executemany("INSERT INTO item VALUES (?, ?, ?)", [(i, f"item{i}", i * 1.5) for i in range(500)])
    conn.commit()
    conn.close()
    url = f"duckdb:///{folder / 'shop.duckdb'}"
    load_into(url, source)
    db = DuckDBDatabase(url, memory_limit=LIMIT)
    peaks: dict[str, int] = {}
    yield db, folder, peaks
    db.close()
    if peaks:
        print(f"\nDuckDB worker peak resident memory (MiB) against DuckDB's memory limit of "
              f"{memory_bytes(LIMIT) / 2**20:.0f} MiB and the worker's cap of its size + "
              f"{(memory_bytes(LIMIT) + HEADROOM) / 2**20:.0f} MiB:")
        for name, peak in sorted(peaks.items(), key=lambda kv: -kv[1]):
            print(f"  {peak / 2**20:6.0f}  {name}")


def _unchanged_and_serving(db, folder, before: str, files: list[str], name: str) -> None:
    """The database file has the same bytes, its folder the same files, nothing was written to
    /tmp, and the next query is answered."""
    assert _digest(db.path) == before, f"{name} changed the database file"
    assert sorted(os.listdir(folder)) == files, f"{name} left files beside the database"
    assert not [p for p in os.listdir("/tmp") if p.startswith(os.path.basename(PWNED))], f"{name} wrote a file"
    assert db.execute("SELECT count(*), max(name) FROM item", DEADLINE * 4).rows == [(500, "item99")]


def _record_peak(peaks: dict, key: str, res) -> None:
    """The worker's peak for a statement that reached it, which must stay within its cap."""
    if res.peak_bytes is not None:
        peaks[key] = res.peak_bytes
        assert res.peak_bytes < memory_bytes(LIMIT) + HEADROOM, (key, res.peak_bytes)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_statement_is_refused_or_stopped(duck, name):
    db, folder, peaks = duck
    before, files = _digest(db.path), sorted(os.listdir(folder))
    res = db.execute(HOSTILE[name], DEADLINE)
    assert not res.ok, f"{name} ran: {res.rows[:3]}"
    assert res.error and str(folder) not in res.error and "root:" not in res.error  # no path, no file's lines
    if name in BOMBS and res.transpiled:  # passed the allow lists: the deadline or a memory limit stopped it
        assert res.timed_out or "memory" in res.error.lower(), res.error
    _record_peak(peaks, name, res)
    _unchanged_and_serving(db, folder, before, files, name)


@pytest.mark.parametrize("name", MEMORY_BOMBS)
def test_memory_bomb_is_bounded_by_the_worker(duck, name):
    """Past the allow lists, on the worker itself: DuckDB's memory limit or the address-space cap
    ends the statement (out of memory), not the deadline."""
    db, folder, peaks = duck
    before, files = _digest(db.path), sorted(os.listdir(folder))
    res = db._run(HOSTILE[name], 20.0, 10_000, 32 << 20, False)
    assert not res.ok and not res.timed_out and "out of memory" in res.error.lower(), res.error
    _record_peak(peaks, f"{name} (on the worker)", res)
    _unchanged_and_serving(db, folder, before, files, name)
