"""The OpenAI-compatible endpoints, driven by the real `openai` package against uvicorn on
127.0.0.1: a chat completion and a streamed one give the SQL `POST /v1/generate` gives for the
same question and schema, rows come in the `vantage` extra field (binary and non-finite cells as
strict JSON, the same on every route), bad input gets a 4xx, and the server's limits
(admission counting running work) hold for chat requests too."""

from __future__ import annotations

import json
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from infer_fixture import first_table_engine, make_cells_db, make_db, make_model_dir
from vantage_core.sql.format import formatted_sql
from test_serve_api import LoopbackServer
from vantage_core.inference.engine import Engine
from vantage_core.inference.openai_api import create_table_statements
from vantage_core.inference.serve import ServeSettings, create_app

DDL = """CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);
CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, year INTEGER,
                      singer_id INTEGER REFERENCES singer(singer_id));"""
SYSTEM = f"You write SQLite queries. Answer with SQL only.\n\nThe database:\n{DDL}\n\nThank you."
QUESTIONS = ["how many singers are there?", "names of singers from France"]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-openai")
    (root / "dbs").mkdir()
    make_db(root / "dbs" / "concerts.sqlite")
    eng = Engine.load(make_model_dir(root / "model", seed=3))
    eng.db_dir = root / "dbs"
    return eng


@pytest.fixture(scope="module")
def server(engine):
    """(httpx client, openai client) on one real server."""
    app = create_app(engine, ServeSettings(db_dirs=[str(engine.db_dir)]))
    with LoopbackServer(app) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        yield http, client


def _streamed(client, **kw) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


def test_models_lists_the_served_model(server, engine):
    _, client = server
    assert [m.id for m in client.models.list()] == [engine.config.run.name]


@pytest.mark.parametrize("question", QUESTIONS)
def test_chat_and_stream_give_the_sql_of_v1_generate_for_a_pasted_schema(server, engine, question):
    http, client = server
    want = http.post("/v1/generate", json={"question": question, "schema_sql": DDL}).json()["sql"]
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    done = client.chat.completions.create(model=engine.config.run.name, messages=messages)
    assert done.object == "chat.completion" and done.choices[0].message.role == "assistant"
    assert done.choices[0].message.content == want
    assert done.choices[0].finish_reason in ("stop", "length")
    text, chunks = _streamed(client, model=engine.config.run.name, messages=messages)
    assert text == want
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == done.choices[0].finish_reason
    assert chunks[-1].model_extra["vantage"]["sql"] == want


def test_a_served_database_and_rows_in_the_extra_field(server, engine):
    http, client = server
    question = QUESTIONS[1]
    want = http.post("/v1/generate", json={"question": question, "db_id": "concerts", "run": True}).json()
    done = client.chat.completions.create(model=engine.config.run.name,
                                          messages=[{"role": "user", "content": question}],
                                          extra_body={"database": "concerts", "run": True})
    extra = done.model_extra["vantage"]
    assert done.choices[0].message.content == want["sql"] == extra["sql"]
    assert (extra["rows"], extra["error"]) == (want["rows"], want["error"])
    text, chunks = _streamed(client, model=engine.config.run.name, messages=[{"role": "user", "content": question}],
                             extra_body={"database": "concerts", "run": True})
    assert text == want["sql"] and chunks[-1].model_extra["vantage"]["rows"] == want["rows"]
    plain = client.chat.completions.create(model=engine.config.run.name,
                                           messages=[{"role": "user", "content": question}],
                                           extra_body={"database": "concerts"})
    assert plain.model_extra["vantage"]["rows"] is None  # rows only when asked


def test_errors_name_what_is_wrong(server, engine):
    _, client = server
    name = engine.config.run.name
    with pytest.raises(openai.NotFoundError, match="this server serves"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.UnprocessableEntityError, match="CREATE TABLE statements in a system message"):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "how many singers?"}])
    with pytest.raises(openai.NotFoundError, match="database: unknown 'nope'; served: concerts"):
        client.chat.completions.create(model=name, messages=[{"role": "user", "content": "q"}],
                                       extra_body={"database": "nope"})
    with pytest.raises(openai.UnprocessableEntityError, match="run: needs `database`"):
        client.chat.completions.create(model=name, messages=[{"role": "system", "content": DDL},
                                                             {"role": "user", "content": "q"}],
                                       extra_body={"run": True})
    with pytest.raises(openai.UnprocessableEntityError, match="no user message"):
        client.chat.completions.create(model=name, messages=[{"role": "system", "content": DDL}])


def test_chat_requests_count_against_admission(engine):
    """One slot held by a chat request that is still generating: the next chat request gets 503
    at once; when the work ends the slot is free again (events, no sleeps against a timeout)."""
    entered, release = threading.Event(), threading.Event()
    real = engine.generate

    def held(question, **kw):
        entered.set()
        assert release.wait(30), "the test never released the generation"
        return real(question, **kw)

    app = create_app(engine, ServeSettings(db_dirs=[str(engine.db_dir)], max_concurrency=1, timeout_s=60))
    engine.generate = held  # the app calls engine.generate at each request
    try:
        with LoopbackServer(app) as http:
            client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
            body = dict(model=engine.config.run.name, messages=[{"role": "user", "content": "how many singers?"}],
                        extra_body={"database": "concerts"})
            with ThreadPoolExecutor(1) as pool:
                first = pool.submit(client.chat.completions.create, **body)
                assert entered.wait(30)
                with pytest.raises(openai.APIStatusError) as refused:
                    client.chat.completions.create(**body)
                assert refused.value.status_code == 503
                release.set()
                assert first.result(timeout=60).choices[0].message.content
            assert client.chat.completions.create(**body).choices[0].message.content  # the slot is free again
    finally:
        engine.generate = real


def test_create_table_statements_keeps_statements_whole_and_drops_prose():
    text = ("Schema (SQLite):\nCREATE TABLE t (a DECIMAL(10, 2), b TEXT DEFAULT ')', CHECK (a > 0));\n"
            "Some words. create temp table u(x int)\nCREATE TABLE broken (")
    assert create_table_statements(text) == ("CREATE TABLE t (a DECIMAL(10, 2), b TEXT DEFAULT ')', CHECK (a > 0));\n"
                                              "create temp table u(x int);")


@pytest.mark.parametrize("raw, field", [
    ('{"model": "%s", "database": "concerts", "messages": [{"role": "user", "content": "how many \\udfff"}]}', "content"),
    ('{"model": "%s", "messages": [{"role": "system", "content": "CREATE TABLE t (a\\udfff)"}, '
     '{"role": "user", "content": "q"}]}', "content"),
    ('{"model": "%s", "database": "concerts", "messages": [{"role": "user", "content": [{"type": "text", '
     '"text": "\\ud800"}]}]}', "content"),
    ('{"model": "%s", "database": "conc\\udfffrts", "messages": [{"role": "user", "content": "q"}]}', "database"),
    ('{"model": "%s", "temperature": NaN, "decoding": "sample", "messages": [{"role": "user", "content": "q"}]}',
     "temperature"),
    ('{"model": "%s", "top_p": Infinity, "messages": [{"role": "user", "content": "q"}]}', "top_p"),
], ids=["surrogate", "surrogate-in-system", "surrogate-in-part", "surrogate-in-database", "nan", "infinity"])
def test_a_lone_surrogate_or_a_non_finite_number_in_chat_gets_422(server, engine, raw, field):
    """JSON's "\\udfff" (a lone surrogate) and NaN / Infinity get 422 naming the field, as on
    /v1/generate, and the server goes on answering."""
    http, _ = server
    r = http.post("/v1/chat/completions", content=(raw % engine.config.run.name).encode(),
                  headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text[:300]
    assert field in r.json()["error"]["message"]
    assert http.get("/health").json()["status"] == "ok"


def _refuse(name: str):
    raise ValueError(f"{name} is not JSON")


def test_binary_and_non_finite_cells_are_strict_json_on_every_route(engine, tmp_path):
    """A BLOB X'FFFE0080' and +-inf come back as {"$base64": ...} and "Infinity" / "-Infinity" on
    /v1/generate, chat and streamed chat (read by the openai package), each streamed chunk strict
    JSON (NaN and Infinity refused)."""
    make_cells_db(tmp_path / "cells.sqlite")
    answering = first_table_engine(engine.info["folder"])  # answers SELECT * FROM the first table
    want = [[{"$base64": "//4AgA=="}, "Infinity"], [{"$base64": "AA=="}, "-Infinity"]]
    app = create_app(answering, ServeSettings(db_dirs=[str(tmp_path)]))
    with LoopbackServer(app) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        r = http.post("/v1/generate", json={"question": "everything", "db_id": "cells", "run": True})
        assert r.status_code == 200, r.text
        assert json.loads(r.text, parse_constant=_refuse)["rows"] == want
        ask = dict(model=answering.config.run.name, messages=[{"role": "user", "content": "everything"}],
                   extra_body={"database": "cells", "run": True})
        done = client.chat.completions.create(**ask)
        assert done.choices[0].message.content == "SELECT * FROM cells"
        assert done.model_extra["vantage"]["rows"] == want
        _, chunks = _streamed(client, **ask)
        assert chunks[-1].model_extra["vantage"]["rows"] == want
        raw = {"model": ask["model"], "messages": ask["messages"], **ask["extra_body"], "stream": True}
        with http.stream("POST", "/v1/chat/completions", json=raw) as s:
            events = [line[len("data: "):] for line in s.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        assert [json.loads(e, parse_constant=_refuse) for e in events[:-1]][-1]["vantage"]["rows"] == want


MODEL_STYLE = "select {table} . name , count ( * ) from {table} where {table} . age > 20 group by {table} . name"
SHOWN = "SELECT singer.name, COUNT(*) FROM singer WHERE singer.age > 20 GROUP BY singer.name"


def test_every_route_shows_the_sql_formatted_and_runs_the_models_text(engine):
    """A model writing ``select singer . name , count ( * ) ...``: /v1/generate (answer and
    candidates), chat, streamed chat and its extra field all show the formatted SQL, and the rows
    are those of the model's own text run on the database."""
    answering = first_table_engine(engine.info["folder"], MODEL_STYLE, max_new_tokens=96)
    raw = MODEL_STYLE.format(table="singer")
    assert formatted_sql(raw) == SHOWN != raw
    with sqlite3.connect(engine.db_dir / "concerts.sqlite") as con:
        want_rows = sorted(map(list, con.execute(raw).fetchall()))
    app = create_app(answering, ServeSettings(db_dirs=[str(engine.db_dir)]))
    with LoopbackServer(app) as http:
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        out = http.post("/v1/generate", json={"question": "singers over 20", "db_id": "concerts", "run": True}).json()
        assert out["sql"] == SHOWN and out["candidates"][out["chosen"]]["sql"] == SHOWN
        assert sorted(out["rows"]) == want_rows == [["Ann", 1], ["Bo", 1], ["Cy", 1]]
        ask = dict(model=answering.config.run.name, messages=[{"role": "user", "content": "singers over 20"}],
                   extra_body={"database": "concerts", "run": True})
        done = client.chat.completions.create(**ask)
        assert done.choices[0].message.content == SHOWN == done.model_extra["vantage"]["sql"]
        assert sorted(done.model_extra["vantage"]["rows"]) == want_rows
        text, chunks = _streamed(client, **ask)
        assert text == SHOWN == chunks[-1].model_extra["vantage"]["sql"]
