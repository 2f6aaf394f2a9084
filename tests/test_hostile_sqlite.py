"""Hostile SQL through the SQLite sandbox (vantage_core/sql/sandbox.py): every statement is
refused, or stopped by the deadline or the length and memory caps, or cut at the row cap. After
each one the database file is byte-identical, its folder holds no new file (no journal, -wal,
-shm, attached or vacuumed copy), no file was written elsewhere, and the next query answers."""

from __future__ import annotations

import hashlib
import os

import pytest

from test_databases import make_source

DEADLINE = 0.5  # the time bombs' deadline: the battery runs in seconds
MAX_ROWS = 100
PWNED = "/tmp/vantage-sqlite-pwned"
# refused before it runs (or failing without touching anything); stopped by the deadline or a
# length or memory cap; cut at the row cap, or stopped by the deadline first on a slow machine
REFUSED, STOPPED, BOUNDED = "refused", "stopped", "bounded"

HOSTILE = {
    # writes and schema changes
    "delete": ("DELETE FROM item", REFUSED),
    "delete_returning": ("DELETE FROM item RETURNING *", REFUSED),
    "update": ("UPDATE item SET price = 0", REFUSED),
    "insert": ("INSERT INTO item VALUES (9999, 'x', 1, 1, 1)", REFUSED),
    "replace_into": ("REPLACE INTO item VALUES (1, 'x', 1, 1, 1)", REFUSED),
    "upsert": ("INSERT INTO item VALUES (1, 'x', 1, 1, 1) ON CONFLICT(id) DO UPDATE SET name = 'y'", REFUSED),
    "drop_table": ("DROP TABLE item", REFUSED),
    "create_table": ("CREATE TABLE t (a)", REFUSED),
    "create_table_as": ("CREATE TABLE t AS SELECT * FROM item", REFUSED),
    "create_temp_table": ("CREATE TEMP TABLE t (a)", REFUSED),
    "create_view": ("CREATE VIEW v AS SELECT 1", REFUSED),
    "create_trigger": ("CREATE TRIGGER tr AFTER INSERT ON item BEGIN DELETE FROM item; END", REFUSED),
    "create_index": ("CREATE INDEX ix ON item(name)", REFUSED),
    "alter_rename": ("ALTER TABLE item RENAME TO gone", REFUSED),
    "alter_add_column": ("ALTER TABLE item ADD COLUMN z INTEGER", REFUSED),
    "reindex": ("REINDEX", REFUSED),
    "analyze": ("ANALYZE", REFUSED),
    "vacuum": ("VACUUM", REFUSED),
    "vacuum_into": (f"VACUUM INTO '{PWNED}.sqlite'", REFUSED),
    "second_statement": ("SELECT 1; DROP TABLE item", REFUSED),
    "begin_commit": ("BEGIN; DELETE FROM item; COMMIT", REFUSED),
    "savepoint": ("SAVEPOINT s", REFUSED),
    # other databases and files
    "attach_memory": ("ATTACH DATABASE ':memory:' AS other", REFUSED),
    "attach_file": (f"ATTACH DATABASE '{PWNED}.db' AS other", REFUSED),
    "detach": ("DETACH DATABASE main", REFUSED),
    "load_extension": ("SELECT load_extension('/tmp/vantage-none.so')", REFUSED),
    "readfile": ("SELECT readfile('/etc/passwd')", REFUSED),
    "writefile": (f"SELECT writefile('{PWNED}', 'x')", REFUSED),
    "fts3_tokenizer": ("SELECT fts3_tokenizer('simple')", REFUSED),
    # pragmas that change the file, the connection or show the server's paths
    "writable_schema": ("PRAGMA writable_schema = ON", REFUSED),
    "journal_mode_wal": ("PRAGMA journal_mode = WAL", REFUSED),
    "user_version": ("PRAGMA user_version = 7", REFUSED),
    "application_id": ("PRAGMA application_id = 7", REFUSED),
    "schema_version": ("PRAGMA schema_version = 7", REFUSED),
    "query_only_off": ("PRAGMA query_only = 0", REFUSED),
    "wal_checkpoint": ("PRAGMA wal_checkpoint(TRUNCATE)", REFUSED),
    "locking_mode": ("PRAGMA locking_mode = EXCLUSIVE", REFUSED),
    "temp_store_directory": (f"PRAGMA temp_store_directory = '{PWNED}'", REFUSED),
    "optimize": ("PRAGMA optimize", REFUSED),
    "database_list": ("PRAGMA database_list", REFUSED),
    "database_list_function": ("SELECT file FROM pragma_database_list", REFUSED),
    # memory and length bombs
    "randomblob": ("SELECT randomblob(1000000000)", STOPPED),
    "zeroblob": ("SELECT length(zeroblob(1000000000))", STOPPED),
    "printf_width": ("SELECT length(printf('%.*c', 1000000000, 'x'))", STOPPED),
    "replace_nested": ("SELECT length(" + "replace(" * 7 + "hex(zeroblob(10000))" + ", '0', '00000')" * 7 + ")",
                       STOPPED),
    "recursive_doubling": ("WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) "
                           "SELECT max(length(s)) FROM r", STOPPED),
    # time bombs and huge outputs
    "recursive_cte": ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
                      STOPPED),
    "cross_join_count": ("SELECT count(*) FROM item a, item b, item c, item d", STOPPED),
    "group_concat_cross": ("SELECT length(group_concat(a.name || b.name)) FROM item a, item b, item c", STOPPED),
    "cross_join_rows": ("SELECT * FROM item a, item b, item c", BOUNDED),
    "recursive_rows": ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", BOUNDED),
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """The database under test, alone in its folder."""
    return str(make_source(tmp_path_factory.mktemp("hostile") / "shop.sqlite"))


def file_state(path: str) -> tuple:
    """The file's bytes (hashed) and the names beside it."""
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return digest, sorted(os.listdir(os.path.dirname(path)))


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_statement_changes_nothing(shop, name):
    """Each statement is refused, stopped or cut; the file and its folder stay as they were, and
    the next query answers."""
    from vantage_core.sql.sandbox import execute

    sql, outcome = HOSTILE[name]
    before = file_state(shop)
    res = execute(shop, sql, DEADLINE, max_rows=MAX_ROWS)
    if outcome == REFUSED:
        assert not res.ok and res.error and not res.timed_out, f"{name} ran: {res.rows[:3]}"
    elif outcome == STOPPED:
        capped = any(w in (res.error or "").lower() for w in ("too big", "memory", "interrupted"))
        assert not res.ok and (res.timed_out or capped), (res.error, res.rows[:3])
    else:
        assert (res.ok and res.truncated and len(res.rows) == MAX_ROWS) or res.timed_out, (res.error, len(res.rows))
    assert file_state(shop) == before, f"{name} changed the database or its folder"
    assert not any(os.path.exists(PWNED + ext) for ext in ("", ".sqlite", ".db"))
    assert execute(shop, "SELECT count(*) FROM item", DEADLINE).rows == [(500,)]
