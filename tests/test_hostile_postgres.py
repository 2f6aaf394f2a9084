"""Hostile SQL through the PostgreSQL connector, as the server's superuser (allowed with
``--allow-privileged``) and as a role that can only read (``vantage data load-into --reader``).

Every statement is refused before it runs, or stopped by the deadline, or cut at the row cap.
After each one the database and the server are as they were: the tables' rows, the roles and
their settings, the replication slots, the databases' settings, the statistics' reset times,
large objects and prepared transactions; no lock held by the connector's session or any advisory
lock anywhere; the connector's own session holds no changed setting, prepared statement, cursor,
temporary table or listened channel; no file written; and the next query answers. The server is
the session's throwaway cluster (tests/conftest.py) or $VANTAGE_TEST_POSTGRES_URL."""

from __future__ import annotations

import os
import uuid

import pytest

from conftest import as_role, with_database
from test_databases import make_source

DEADLINE = 0.5  # the time bombs' deadline: the battery runs in seconds
MAX_ROWS = 100
READER = "vantage_hostile_reader"
PWNED = "/tmp/vantage-pg-pwned"
# refused before it runs; stopped by the deadline (or a memory error); cut at the row cap, or
# stopped by the deadline first where the machine is slow
REFUSED, STOPPED, BOUNDED = "refused", "stopped", "bounded"

HOSTILE = {
    # SQL inside a string, run by a function
    "ts_stat_read_file": ("SELECT * FROM ts_stat('SELECT to_tsvector(pg_read_file(''/etc/hostname''))')", REFUSED),
    "ts_stat_authid": ("SELECT * FROM ts_stat('SELECT to_tsvector(rolname) FROM pg_authid')", REFUSED),
    "ts_rewrite": ("SELECT ts_rewrite(to_tsquery('a'), 'SELECT to_tsquery(pg_read_file(''/etc/hostname''))')", REFUSED),
    "query_to_xml": ("SELECT query_to_xml('SELECT pg_read_file(''/etc/passwd'')', true, true, '')", REFUSED),
    "query_to_xml_delete": ("SELECT query_to_xml('DELETE FROM item RETURNING 1', true, true, '')", REFUSED),
    "cursor_to_xml": ("SELECT cursor_to_xml('c', 1, true, true, '')", REFUSED),
    "database_to_xml": ("SELECT database_to_xml(true, true, '')", REFUSED),
    "dblink": (f"SELECT * FROM dblink('dbname=postgres', 'COPY (SELECT 1) TO ''{PWNED}''')", REFUSED),
    # what outlives the rollback
    "replication_slot": ("SELECT pg_create_physical_replication_slot('vantage_slot', true)", REFUSED),
    "logical_slot": ("SELECT pg_create_logical_replication_slot('vantage_lslot', 'test_decoding')", REFUSED),
    "stat_reset": ("SELECT pg_stat_reset()", REFUSED),
    "stat_reset_shared": ("SELECT pg_stat_reset_shared('bgwriter')", REFUSED),
    "advisory_lock": ("SELECT pg_advisory_lock(777)", REFUSED),
    "advisory_lock_shared": ("SELECT pg_advisory_lock_shared(777)", REFUSED),
    "try_advisory_lock": ("SELECT pg_try_advisory_lock(778)", REFUSED),
    "advisory_lock_in_where": ("SELECT name FROM item WHERE pg_try_advisory_lock(id)", REFUSED),
    "set_config": ("SELECT set_config('work_mem', '1MB', false)", REFUSED),
    "set": ("SET statement_timeout = 0", REFUSED),
    "set_role": ("SET ROLE vantage", REFUSED),
    "prepare": ("PREPARE p AS SELECT 1", REFUSED),
    "listen": ("LISTEN vantage_channel", REFUSED),
    "notify": ("SELECT pg_notify('vantage_channel', 'x')", REFUSED),
    "temp_table": ("CREATE TEMP TABLE t AS SELECT 1", REFUSED),
    "cursor_with_hold": ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM item", REFUSED),
    "commit_then_write": ("SELECT 1; COMMIT; DELETE FROM item", REFUSED),
    "lo_create": ("SELECT lo_create(0)", REFUSED),
    "lo_from_bytea": ("SELECT lo_from_bytea(0, 'x')", REFUSED),
    "switch_wal": ("SELECT pg_switch_wal()", REFUSED),
    "terminate_backends": ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity", REFUSED),
    "reload_conf": ("SELECT pg_reload_conf()", REFUSED),
    "alter_system": ("ALTER SYSTEM SET work_mem = '1MB'", REFUSED),
    "alter_role": (f"ALTER ROLE {READER} SUPERUSER", REFUSED),
    "create_role": ("CREATE ROLE vantage_evil SUPERUSER LOGIN", REFUSED),
    # files and the server's paths
    "read_file": ("SELECT pg_read_file('/etc/passwd')", REFUSED),
    "read_binary_file": ("SELECT pg_read_binary_file('/etc/passwd')", REFUSED),
    "ls_dir": ("SELECT pg_ls_dir('.')", REFUSED),
    "stat_file": ("SELECT pg_stat_file('postgresql.conf')", REFUSED),
    "lo_import": ("SELECT lo_import('/etc/passwd')", REFUSED),
    "copy_to": (f"COPY item TO '{PWNED}.csv'", REFUSED),
    "copy_program": (f"COPY (SELECT 1) TO PROGRAM 'touch {PWNED}'", REFUSED),
    "pg_settings": ("SELECT name, setting FROM pg_settings WHERE name = 'data_directory'", REFUSED),
    "pg_settings_joined": ("SELECT setting FROM item, pg_settings WHERE id = 1", REFUSED),
    "current_setting": ("SELECT current_setting('data_directory')", REFUSED),
    "show": ("SHOW data_directory", REFUSED),
    "pg_authid": ("SELECT rolname, rolpassword FROM pg_catalog.pg_authid", REFUSED),
    "pg_file_settings": ("SELECT * FROM pg_file_settings", REFUSED),
    "version": ("SELECT version()", REFUSED),
    # writes, hidden or not
    "delete": ("DELETE FROM item", REFUSED),
    "update": ("UPDATE item SET price = 0", REFUSED),
    "delete_in_cte": ("WITH d AS (DELETE FROM item RETURNING *) SELECT count(*) FROM d", REFUSED),
    "select_into": ("SELECT * INTO item_copy FROM item", REFUSED),
    "select_for_update": ("SELECT * FROM item FOR UPDATE", REFUSED),
    "drop": ("DROP TABLE item", REFUSED),
    "truncate": ("TRUNCATE item", REFUSED),
    "grant": ("GRANT ALL ON item TO PUBLIC", REFUSED),
    # huge outputs and bombs
    "generate_series": ("SELECT count(*) FROM generate_series(1, 1000000000000)", REFUSED),
    "repeat_huge": ("SELECT length(repeat('x', 1000000000))", REFUSED),
    "lpad_huge": ("SELECT length(lpad('x', 1000000000, 'y'))", REFUSED),
    "repeat_nested": ("SELECT length(repeat(repeat('x', 10000), 10000))", REFUSED),
    "sleep": ("SELECT pg_sleep(100)", REFUSED),
    "recursive_cte": ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r",
                      STOPPED),
    "recursive_doubling": ("WITH RECURSIVE r(s) AS (SELECT 'ab' UNION ALL SELECT s || s FROM r) "
                           "SELECT max(length(s)) FROM r", STOPPED),
    "cross_join_count": ("SELECT count(*) FROM item a, item b, item c, item d", STOPPED),
    "group_concat_cross": ("SELECT length(group_concat(a.name || b.name)) FROM item a, item b, item c", STOPPED),
    "cross_join_rows": ("SELECT * FROM item a, item b, item c", BOUNDED),
    "recursive_rows": ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT n FROM r", BOUNDED),
}


@pytest.fixture(scope="module")
def shop(postgres_server, tmp_path_factory):
    """A fresh database with a reader role: (superuser URL, reader URL, a superuser connection to
    it that watches the server); dropped after."""
    import psycopg

    from vantage_core.data.load_into import load_into
    from vantage_core.sql.database import close_all

    name = f"vh_{uuid.uuid4().hex[:10]}"
    admin = with_database(postgres_server, name)
    load_into(admin, make_source(tmp_path_factory.mktemp("src") / "shop.sqlite"), reader=READER)
    with psycopg.connect(admin, autocommit=True) as watcher:
        yield admin, as_role(admin, READER), watcher
    close_all()
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["superuser", "reader"])
def connector(request, shop):
    """The connector under test: as the superuser with privileged roles allowed, or as the reader."""
    from vantage_plugins.databases.postgresql import PostgreSQLDatabase

    admin, reader, _ = shop
    db = PostgreSQLDatabase(admin, allow_privileged=True) if request.param == "superuser" else \
        PostgreSQLDatabase(reader)
    yield db
    db.close()


SERVER_STATE = {  # what no request may change, as a superuser's session sees it
    "rows": "SELECT 'item', count(*), sum(hashtext(t::text)) FROM item t UNION ALL "
            "SELECT 'category', count(*), sum(hashtext(t::text)) FROM category t",
    "relations": "SELECT relname, relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 "WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') ORDER BY 1",
    "roles": "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin "
             "FROM pg_roles ORDER BY 1",
    "role_settings": "SELECT setdatabase, setrole, setconfig FROM pg_db_role_setting ORDER BY 1, 2",
    "slots": "SELECT slot_name FROM pg_replication_slots ORDER BY 1",
    "settings": "SELECT name, setting FROM pg_settings WHERE context NOT IN ('internal', 'postmaster') "
                "AND name NOT IN ('application_name', 'transaction_isolation') ORDER BY 1",
    "file_settings": "SELECT name, setting FROM pg_file_settings ORDER BY 1, 2",
    "stats_reset": "SELECT (SELECT stats_reset FROM pg_stat_database WHERE datname = current_database()), "
                   "(SELECT stats_reset FROM pg_stat_bgwriter)",
    "large_objects": "SELECT count(*) FROM pg_largeobject_metadata",
    "prepared_xacts": "SELECT gid FROM pg_prepared_xacts",
    "advisory_locks": "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
}
SESSION_STATE = {  # what the connector's own session may not keep after a request
    "settings": "SELECT name, setting FROM pg_settings WHERE source = 'session' ORDER BY 1",
    "prepared": "SELECT name FROM pg_prepared_statements",
    "cursors": "SELECT name FROM pg_cursors",
    "channels": "SELECT pg_listening_channels()",
    "temp_tables": "SELECT relname FROM pg_class WHERE relpersistence = 't'",
    "advisory_locks": "SELECT objid, mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'",
}


def server_state(watcher) -> dict:
    """SERVER_STATE (the database's rows and the server's roles, slots, settings...) read through
    the watching superuser connection (settings given to databases or roles, which only new
    sessions would show, are read from pg_db_role_setting; reloaded ones reach every session)."""
    return {k: watcher.execute(q).fetchall() for k, q in SERVER_STATE.items()}


def session_state(db) -> dict:
    """SESSION_STATE as the connector's own (kept) connection sees it."""
    conn = db._connection()
    try:
        return {k: conn.execute(q).fetchall() for k, q in SESSION_STATE.items()}
    finally:
        conn.rollback()


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_statement_changes_nothing(connector, shop, name):
    """Each statement is refused, stopped or cut, changes nothing on the server or in the
    connector's session, and the next query answers."""
    sql, outcome = HOSTILE[name]
    watcher = shop[2]
    connector.execute("SELECT count(*) FROM item", DEADLINE)  # connected, schema read
    clean_session = session_state(connector)
    before = server_state(watcher)
    res = connector.execute(sql, DEADLINE, max_rows=MAX_ROWS)
    if outcome == REFUSED:
        assert not res.ok and res.error and not res.timed_out, f"{name} ran: {res.rows[:3]}"
    elif outcome == STOPPED:
        assert not res.ok and (res.timed_out or "memory" in (res.error or "")), (res.error, res.rows[:3])
    else:
        assert (res.ok and res.truncated and len(res.rows) == MAX_ROWS) or res.timed_out, (res.error, len(res.rows))
    assert server_state(watcher) == before, f"{name} changed the server"
    assert session_state(connector) == clean_session, f"{name} left state in the session"
    assert not any(os.path.exists(PWNED + ext) for ext in ("", ".csv"))
    assert connector.execute("SELECT count(*) FROM item", DEADLINE).rows == [(500,)]

