"""The HTTP API over loopback: good requests, bad requests (4xx with a reason), limits."""

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from infer_fixture import make_db, make_model_dir
from vantage_core.inference.engine import Engine
from vantage_core.inference.serve import ServeSettings, create_app, schema_from_ddl


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    make_db((root / "dbs").mkdir() or root / "dbs" / "concerts.sqlite")
    eng = Engine.load(make_model_dir(root / "model"))
    eng.db_dir = root / "dbs"
    return eng


class LoopbackServer:
    """uvicorn on 127.0.0.1 in a thread, for real HTTP round trips."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture(scope="module")
def client(engine):
    app = create_app(engine, ServeSettings(db_dirs=[str(engine.db_dir)], max_body_bytes=4096))
    with LoopbackServer(app) as c:
        yield c


SCHEMA = {"tables": [{"name": "singer", "columns": [{"name": "singer_id"}, {"name": "name"}, {"name": "age", "type": "number"}]}]}


def test_health_and_openapi(client):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["databases"] == 1
    doc = client.get("/openapi.json").json()
    assert "/v1/generate" in doc["paths"] and "/health" in doc["paths"]
    assert client.get("/v1/databases").json() == ["concerts"]
    tables = client.get("/v1/databases/concerts/schema").json()["tables"]
    assert {t["name"] for t in tables} == {"singer", "concert"}


def test_generate_with_a_known_database_runs_the_sql(client):
    r = client.post("/v1/generate", json={"question": "how many singers?", "db_id": "concerts", "run": True,
                                         "decoding": "beam", "beam_size": 2, "constraint": "sql_schema",
                                         "routing": True, "max_new_tokens": 32})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["candidates"]) == 2 and body["sql"] == body["candidates"][body["chosen"]]["sql"]
    assert (body["rows"] is not None) != (body["error"] is not None)
    assert len(body["routing"]) == body["n_tokens"]


def test_generate_with_a_pasted_schema_or_ddl(client):
    r = client.post("/v1/generate", json={"question": "names?", "schema": SCHEMA, "max_new_tokens": 8})
    assert r.status_code == 200, r.text
    ddl = "CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, age INT);"
    r = client.post("/v1/generate", json={"question": "names?", "schema_sql": ddl, "max_new_tokens": 8})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, status, reason", [
    ({"db_id": "concerts"}, 422, "question"),
    ({"question": "q"}, 422, "exactly one of"),
    ({"question": "q", "db_id": "concerts", "schema": SCHEMA}, 422, "exactly one of"),
    ({"question": "q", "db_id": "nowhere"}, 404, "unknown db_id"),
    ({"question": "q", "schema": SCHEMA, "run": True}, 422, "need a known db_id"),
    ({"question": "q", "db_id": "concerts", "beam_size": 50}, 422, "limit"),
    ({"question": "q", "db_id": "concerts", "decoding": "nucleus"}, 422, "greedy"),
    ({"question": "q", "db_id": "concerts", "constraint": "regex"}, 422, "unknown constraint"),
    ({"question": "q", "schema_sql": "DROP TABLE singer"}, 400, "only CREATE TABLE"),
    ({"question": "q", "schema_sql": "CREATE TABLE ("}, 400, "not valid SQL"),
    ({"question": "q", "db_id": "concerts", "surprise": 1}, 422, "surprise"),
    ({"question": "   ", "db_id": "concerts"}, 400, "empty"),
])
def test_bad_requests_get_4xx_with_a_reason(client, body, status, reason):
    r = client.post("/v1/generate", json=body)
    assert r.status_code == status, r.text
    assert reason in r.text
    assert client.get("/health").status_code == 200  # still up


def test_body_size_and_malformed_json(client):
    r = client.post("/v1/generate", content=json.dumps({"question": "x" * 5000, "db_id": "concerts"}),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over 4096 bytes" in r.text
    r = client.post("/v1/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_bounded_concurrency_and_time_limit(engine):
    """With one slot busy, the next request gets 503 at once; past the time limit, 504; the
    slot is free again once the generation has ended. Events, not sleeps, order the steps."""
    app = create_app(engine, ServeSettings(db_dirs=[str(engine.db_dir)], max_concurrency=1, timeout_s=0.3))
    real = engine.generate
    entered, release = threading.Event(), threading.Event()

    def held(*a, **k):
        entered.set()
        release.wait(30)  # held until the test has seen the 503 and the 504
        return real(*a, **k)

    engine.generate = held
    try:
        with LoopbackServer(app) as c:
            body = {"question": "how many singers?", "db_id": "concerts", "max_new_tokens": 4}
            results = {}
            t = threading.Thread(target=lambda: results.setdefault("first", c.post("/v1/generate", json=body)))
            t.start()
            assert entered.wait(30)  # the first request holds the only slot
            second = c.post("/v1/generate", json=body)
            t.join(30)
            assert second.status_code == 503 and "busy" in second.text
            assert results["first"].status_code == 504
            assert c.get("/health").json()["in_flight"] == 1  # its generation still runs
            release.set()
            deadline = time.monotonic() + 30
            while c.get("/health").json()["in_flight"] and time.monotonic() < deadline:
                time.sleep(0.01)  # waits for the other thread's state change, bounded
            assert c.get("/health").json()["in_flight"] == 0
    finally:
        release.set()
        engine.generate = real


def test_schema_from_ddl_reads_keys():
    s = schema_from_ddl("CREATE TABLE a (id INT PRIMARY KEY, x TEXT); "
                        "CREATE TABLE b (id INT, a_id INT, FOREIGN KEY (a_id) REFERENCES a(id));")
    assert [t.name for t in s.tables] == ["a", "b"] and s.tables[0].primary_keys == ["id"]
    assert s.tables[0].columns[0].type == "number"
    assert (s.foreign_keys[0].table, s.foreign_keys[0].column, s.foreign_keys[0].ref_table) == ("b", "a_id", "a")


def test_playground_page_is_served(client):
    r = client.get("/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "<html" in r.text.lower()  # the playground (vantage_core.playground) mounted by create_app
