"""The HTTP API over loopback: good requests, bad requests (4xx with a reason), limits."""

import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from infer_fixture import first_table_engine, make_db, make_model_dir, make_pointer_model_dir
from vantage_core.inference.engine import Engine
from vantage_core.inference.request_schema import schema_from_ddl
from vantage_core.inference.serve import ServeSettings, create_app, server_config


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    make_db((root / "dbs").mkdir() or root / "dbs" / "concerts.sqlite")
    eng = Engine.load(make_model_dir(root / "model"))
    eng.db_dir = root / "dbs"
    return eng


class LoopbackServer:
    """uvicorn on 127.0.0.1 in a thread, set up as `vantage serve` sets it up, for real HTTP round trips."""

    def __init__(self, app, settings: ServeSettings | None = None):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.server = uvicorn.Server(server_config(app, settings or ServeSettings(), port=self.port, log_level="error"))
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
    ({"question": "q", "db_id": "concerts", "constraint": "sql_actions"}, 422, "Constraints that fit it: sql_schema"),
    ({"question": "q", "db_id": "conc\udfffrts"}, 422, "db_id"),
    ({"question": "q", "schema_sql": "CREATE TABLE t (a\udfff)"}, 422, "schema_sql"),
    ({"question": "q", "schema_sql": "DROP TABLE singer"}, 400, "only CREATE TABLE"),
    ({"question": "q", "schema_sql": "CREATE TABLE ("}, 400, "not valid SQL"),
    ({"question": "q", "db_id": "concerts", "surprise": 1}, 422, "surprise"),
    ({"question": "   ", "db_id": "concerts"}, 400, "empty"),
])
def test_bad_requests_get_4xx_with_a_reason(client, body, status, reason):
    """Each bad request gets its 4xx and says why (a lone surrogate travels as JSON's escape)."""
    r = client.post("/v1/generate", content=json.dumps(body), headers={"content-type": "application/json"})
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
    assert "<html" in r.text.lower()  # the playground (vantage_core.inference.playground) mounted by create_app


def test_health_names_no_server_path(client, engine):
    """/health names the model's folder, never the server's path to it."""
    h = client.get("/health")
    assert h.json()["model"] == "model"
    assert str(engine.db_dir.parent) not in h.text and "/tmp" not in h.text


def test_a_constraint_for_another_output_space_gets_422_not_500(tmp_path):
    """sql_schema on a pointer model (a text grammar over pointer actions) is refused before any
    decoding, naming the constraints that fit."""
    from fastapi.testclient import TestClient

    db = make_db(tmp_path / "concerts.sqlite")
    app = create_app(Engine.load(make_pointer_model_dir(tmp_path / "pointer")), ServeSettings(db_dirs=[str(tmp_path)]))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/generate", json={"question": "how many workers", "db_id": db.stem, "constraint": "sql_schema"})
        assert r.status_code == 422, r.text
        assert "Constraints that fit it: sql_actions, none" in r.json()["detail"]
        assert c.post("/v1/generate", json={"question": "how many singers", "db_id": db.stem,
                                            "constraint": "sql_actions"}).status_code == 200


def _guided(engine: Engine) -> Engine:
    """The engine's model with execution-guided choice configured (as the quickstart's config has it)."""
    inference = engine.config.inference.model_copy(update={"execution_guided": True})
    return Engine(engine.model, engine.tokenizer, engine.config.model_copy(update={"inference": inference}), engine.info)


def test_pasted_schemas_work_when_the_model_is_execution_guided(engine):
    """With execution_guided in the model's config, a pasted schema (schema_sql, a schema object,
    CREATE TABLE in a chat's system message) is answered: the choice steps aside and says so.
    Columns without a type (valid SQLite) are read. Asking for execution_guided explicitly with
    no database is still refused."""
    from fastapi.testclient import TestClient

    app = create_app(_guided(engine), ServeSettings(db_dirs=[str(engine.db_dir)]))
    with TestClient(app) as c:
        for body in ({"question": "how many?", "schema_sql": "CREATE TABLE a(x, y)", "max_new_tokens": 4},
                     {"question": "how many?", "schema": SCHEMA, "max_new_tokens": 4}):
            r = c.post("/v1/generate", json=body)
            assert r.status_code == 200, r.text
            from vantage_core.inference.engine import UNGUIDED

            assert r.json()["note"] == UNGUIDED and r.json()["choice"] == "top"
        r = c.post("/v1/chat/completions", json={"model": engine.config.run.name, "max_tokens": 4, "messages": [
            {"role": "system", "content": "CREATE TABLE a(x, y)"}, {"role": "user", "content": "how many?"}]})
        assert r.status_code == 200, r.text
        assert r.json()["vantage"]["note"] == UNGUIDED
        r = c.post("/v1/generate", json={"question": "q", "db_id": "concerts", "max_new_tokens": 4})
        assert r.status_code == 200 and r.json()["note"] is None  # a database: the choice runs
        r = c.post("/v1/generate", json={"question": "q", "schema_sql": "CREATE TABLE a(x)", "execution_guided": True})
        assert r.status_code == 422 and "need a known db_id" in r.text


def test_schema_sql_reads_untyped_columns_and_every_key():
    s = schema_from_ddl("CREATE TABLE a(x, y); CREATE TABLE b(id PRIMARY KEY, a_x REFERENCES a(x), c_id REFERENCES c);"
                        "CREATE TABLE c(k, v, PRIMARY KEY (k))")
    assert [[c.name for c in t.columns] for t in s.tables] == [["x", "y"], ["id", "a_x", "c_id"], ["k", "v"]]
    assert [c.type for c in s.tables[0].columns] == ["text", "text"]
    assert [t.primary_keys for t in s.tables] == [[], ["id"], ["k"]]
    assert [(f.table, f.column, f.ref_table, f.ref_column) for f in s.foreign_keys] == [
        ("b", "a_x", "a", "x"), ("b", "c_id", "c", "k")]


def test_huge_schemas_are_refused_naming_the_limit(engine, tmp_path):
    """A 2,000-table database, a 32 KB pasted schema and a large schema object are refused with
    a 400 naming the limit, before any decoding; a schema within the limit is answered."""
    import sqlite3

    from fastapi.testclient import TestClient

    con = sqlite3.connect(tmp_path / "big.sqlite")
    con.executescript("BEGIN;" + "".join(f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY, name TEXT, age INT, city TEXT);"
                                         for i in range(2000)) + "COMMIT;")
    con.close()
    ddl = "".join(f"CREATE TABLE tab{i} (id INTEGER PRIMARY KEY, name TEXT, age INT, city TEXT);\n" for i in range(416))
    assert 31000 < len(ddl) <= 32000
    big_object = {"tables": [{"name": f"t{i}", "columns": [{"name": f"c{j}"} for j in range(10)]} for i in range(100)]}
    app = create_app(engine, ServeSettings(db_dirs=[str(tmp_path)], max_body_bytes=64 * 1024))
    with TestClient(app) as c:
        r = c.post("/v1/generate", json={"question": "q", "db_id": "big"})
        assert r.status_code == 400 and "2000 tables and 8000 columns" in r.text, r.text
        assert "limit is 1000 tables and columns in all (vantage serve --max-schema-items)" in r.text
        r = c.post("/v1/generate", json={"question": "q", "schema_sql": ddl})
        assert r.status_code == 400 and "more than 1000 tables and columns" in r.text, r.text
        r = c.post("/v1/generate", json={"question": "q", "schema": big_object})
        assert r.status_code == 400 and "100 tables and 1000 columns" in r.text, r.text
        r = c.post("/v1/chat/completions", json={"model": engine.config.run.name,
                                                 "messages": [{"role": "system", "content": ddl},
                                                              {"role": "user", "content": "q"}]})
        assert r.status_code == 400 and "more than 1000 tables and columns" in r.text, r.text
        r = c.post("/v1/generate", json={"question": "q", "schema_sql": ddl[:ddl.index("CREATE TABLE tab199 ")],
                                         "max_new_tokens": 2})
        assert r.status_code == 200, r.text  # 199 tables and 995 columns: within the limit


def test_a_database_replaced_on_disk_is_served_anew(engine, tmp_path):
    """A served file replaced by another (a new inode) is read again: its schema and its rows."""
    import os
    import sqlite3

    from fastapi.testclient import TestClient

    def write(path, table, value):
        con = sqlite3.connect(path)
        con.execute(f"CREATE TABLE {table} (x INTEGER)")
        con.execute(f"INSERT INTO {table} VALUES (?)", (value,))
        con.commit()
        con.close()

    served = tmp_path / "dbs" / "shop.sqlite"
    served.parent.mkdir()
    write(served, "alpha", 1)
    app = create_app(first_table_engine(engine.info["folder"]), ServeSettings(db_dirs=[str(served.parent)]))
    body = {"question": "everything", "db_id": "shop", "run": True}
    with TestClient(app) as c:
        assert c.post("/v1/generate", json=body).json()["rows"] == [[1]]
        for table, value in (("alpha", 2), ("beta", 3)):
            write(tmp_path / f"next{value}.sqlite", table, value)
            os.replace(tmp_path / f"next{value}.sqlite", served)
            r = c.post("/v1/generate", json=body).json()
            assert (r["sql"], r["rows"]) == (f"SELECT * FROM {table}", [[value]]), r
            assert [t["name"] for t in c.get("/v1/databases/shop/schema").json()["tables"]] == [table]


def test_stalled_connections_are_closed(engine):
    """A connection that sends nothing, part of its request line and headers, or its headers and
    part of its body is closed by the server once ``read_timeout_s`` has passed (the socket's own
    timeout is 60 times longer). A request received whole is answered even when its answer
    takes longer than that: it is released only after a connection opened later was closed."""
    settings = ServeSettings(db_dirs=[str(engine.db_dir)], read_timeout_s=0.5)
    app = create_app(engine, settings)
    partial = [b"", b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: appl",
               b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 100\r\n\r\n{\"question\": \"how"]
    server = LoopbackServer(app, settings)

    def closed_by_server(sent: bytes) -> bool:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
            s.sendall(sent)
            return s.recv(1024) == b""  # a timeout here (socket.timeout) fails the test

    real, entered, release = engine.generate, threading.Event(), threading.Event()

    def held(*a, **k):
        entered.set()
        assert release.wait(30)
        return real(*a, **k)

    with server as c:
        for sent in partial:
            assert closed_by_server(sent), sent
        engine.generate = held
        try:
            answers = []
            t = threading.Thread(target=lambda: answers.append(c.post("/v1/generate", json={
                "question": "how many singers?", "db_id": "concerts", "max_new_tokens": 2})))
            t.start()
            assert entered.wait(30)
            assert closed_by_server(b"")  # its deadline came after the waiting request's
            release.set()
            t.join(30)
        finally:
            release.set()
            engine.generate = real
        assert answers and answers[0].status_code == 200, answers
