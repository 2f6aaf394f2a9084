"""Shared fixtures: a fresh plugin manager per test, the location of ../shared/data, and a
PostgreSQL server for the connector tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

import vantage_core  # noqa: F401  (loads the optimized BLAS before anything imports mlx)

REPO = Path(__file__).resolve().parents[1]
PG_ENV = "VANTAGE_TEST_POSTGRES_URL"
REQUIRE_PG_ENV = "VANTAGE_REQUIRE_POSTGRES"  # "1" (CI): no PostgreSQL is an error, not a skip


def shared_data_dir() -> Path:
    return Path(os.environ.get("VANTAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test skips with a message where it is absent."""
    path = shared_data_dir()
    if not (path / "spider" / "train_spider.json").exists():
        pytest.skip(f"real Spider data not found at {path} (set VANTAGE_SHARED_DATA to its folder)")
    return path


@pytest.fixture
def fresh_pm():
    """A plugin manager with Vantage's hook specs and no plugin loaded."""
    from vantage_core.plugins import PluginManager

    return PluginManager()


def with_database(server_url: str, name: str) -> str:
    """A PostgreSQL URL with its database replaced by ``name``."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(server_url)._replace(path="/" + name))


def as_role(url: str, role: str) -> str:
    """A PostgreSQL URL that logs in as ``role`` (no password: the test server trusts its socket)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(netloc=role + "@" + parts.netloc.rpartition("@")[2]))


def _no_postgres(why: str) -> None:
    """Skip the test saying ``why``; fail instead where PostgreSQL is required."""
    if os.environ.get(REQUIRE_PG_ENV) == "1":
        pytest.fail(f"{REQUIRE_PG_ENV}=1 but there is no PostgreSQL server: {why}", pytrace=False)
    pytest.skip(why)


def _reachable(url: str) -> str | None:
    """Why ``url`` cannot be connected to, or None when it can."""
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=5).close()
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0]
    return None


@pytest.fixture(scope="session")
def postgres_server():
    """A superuser URL of a PostgreSQL server: $VANTAGE_TEST_POSTGRES_URL when set, else a
    throwaway cluster (``.ci/postgres``: a unix socket in a temporary folder, no TCP) started for
    this session and removed at its end. Skips, saying why, where neither is possible (fails
    with $VANTAGE_REQUIRE_POSTGRES=1)."""
    given = os.environ.get(PG_ENV)
    if given:
        why = _reachable(given)
        if why:
            _no_postgres(f"{PG_ENV} is set but its server cannot be reached: {why}")
        yield given
        return
    if not (list(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or shutil.which("initdb")):
        _no_postgres(f"no PostgreSQL server binaries (initdb) installed, and {PG_ENV} is not set")
    folder = tempfile.mkdtemp(prefix="vantage-pg-")
    script = str(REPO / ".ci" / "postgres")
    started = subprocess.run(["bash", script, "start", folder], capture_output=True, text=True, timeout=120)
    try:
        if started.returncode != 0:
            logs = " ".join(p.read_text(errors="replace")[-300:] for p in Path(folder).glob("*.log"))
            _no_postgres(f"a throwaway PostgreSQL cluster did not start: {started.stderr.strip()[-300:]} {logs}")
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", script, "stop", folder], capture_output=True, timeout=120)
