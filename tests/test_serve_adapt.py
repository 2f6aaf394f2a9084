"""Adapting from the playground over HTTP (``vantage serve --adapt-dir``): a corrected pair saved
to the database's examples file after ``vantage adapt``'s checks, pairs that cannot be learned
refused with the reason, the routes off without an adapt folder, one job at a time, and the
adapted model answering its database (the others keep the served model)."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from test_cli_errors import assert_one_error_line, run_cli
from test_adapt import ICE, base_run, cache, planets_db, rows_of  # noqa: F401  (base_run, cache: fixtures)
from test_serve_api import LoopbackServer
from vantage_core.inference.serve import ServeSettings, create_app

STEPS = 40
JOB_BOUND_S = 600  # a generous bound on one tiny adaptation (seconds of work on a busy 2-core machine)


@pytest.fixture(scope="module")
def model(base_run):  # noqa: F811
    """The tiny pointer model of test_adapt (trained once per module)."""
    return base_run


def served(model, tmp_path, adapt: bool = True):
    """The tiny model served over loopback on ``planets`` and ``elsewhere`` (a copy of it), with
    adapting on (its folder ``tmp_path/adapt``) or off."""
    from vantage_core.train.adapt_jobs import AdaptJobs, AdaptSettings

    dbs = tmp_path / "dbs"
    dbs.mkdir()
    shutil.copy(planets_db(tmp_path), dbs / "planets.sqlite")
    shutil.copy(dbs / "planets.sqlite", dbs / "elsewhere.sqlite")
    learner = AdaptJobs(str(model), AdaptSettings(str(tmp_path / "adapt"), steps=STEPS, synthetic=50)) if adapt else None
    return LoopbackServer(create_app(str(model), ServeSettings(db_dirs=[str(dbs)]), learner))


def answer(client, db_id: str, question: str) -> dict:
    r = client.post("/v1/generate", json={"question": question, "db_id": db_id, "run": True, "decoding": "greedy"})
    assert r.status_code == 200, r.text
    return r.json()


def finished_job(client) -> dict:
    """The job's status once it is no longer running (polled, within JOB_BOUND_S)."""
    deadline = time.monotonic() + JOB_BOUND_S
    while time.monotonic() < deadline:
        job = client.get("/v1/adapt").json()
        if job["state"] != "running":
            return job
        time.sleep(0.2)
    pytest.fail(f"the adaptation did not end within {JOB_BOUND_S} s: {job}")


def test_a_saved_pair_is_appended_to_the_databases_examples_file(model, tmp_path):
    """Each checked pair becomes one JSON line of ``<adapt-dir>/<db_id>.examples.jsonl``."""
    second = {"question": "How many moons are there?", "sql": "SELECT count(*) FROM moons"}
    with served(model, tmp_path) as client:
        first = client.post("/v1/databases/planets/examples", json=ICE)
        assert first.status_code == 201, first.text
        assert first.json() == {"db_id": "planets", "file": "planets.examples.jsonl", "examples": 1}
        assert client.post("/v1/databases/planets/examples", json=second).json()["examples"] == 2
    lines = (tmp_path / "adapt" / "planets.examples.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [ICE, second]
    assert not (tmp_path / "adapt" / "elsewhere.examples.jsonl").exists()


@pytest.mark.parametrize("pair, status, reason", [
    ({"question": "List the moon names.", "sql": "SELECT name FROM moons"}, 400,
     "planets.examples.jsonl:1: the SQL does not run on planets.sqlite: "),
    ({"question": "Remove the moons.", "sql": "DELETE FROM moons"}, 400, "the SQL does not run on planets.sqlite"),
    ({"question": "Pairs of moons of one planet.",
      "sql": "SELECT a.moon_name FROM moons AS a JOIN moons AS b ON a.planet_id = b.planet_id"}, 400,
     "the action codec cannot express this SQL"),
    ({"question": "   ", "sql": "SELECT count(*) FROM moons"}, 400, "question is empty"),
    ({"question": "How many moons?", "sql": ""}, 422, "sql"),
    ({"question": "How many moons?"}, 422, "sql"),
], ids=["unknown-column", "writes", "self-join", "blank-question", "empty-sql", "no-sql"])
def test_a_pair_that_cannot_be_learned_is_refused_with_the_reason(model, tmp_path, pair, status, reason):
    """A 4xx whose detail says why, no path of the server's, nothing written, the database unchanged."""
    with served(model, tmp_path) as client:
        r = client.post("/v1/databases/planets/examples", json=pair)
    assert r.status_code == status, r.text
    assert reason in json.dumps(r.json()["detail"]) and str(tmp_path) not in r.text
    assert not (tmp_path / "adapt" / "planets.examples.jsonl").exists()
    assert len(rows_of(tmp_path / "dbs" / "planets.sqlite", "SELECT * FROM moons")) == 8


def test_bad_requests_to_the_adapt_routes_are_4xx(model, tmp_path):
    """An unknown database, a body that is not UTF-8, a lone surrogate, an unknown field: 404, 400
    or 422 with a reason, never a 500."""
    with served(model, tmp_path) as client:
        assert client.post("/v1/databases/nowhere/examples", json=ICE).status_code == 404
        assert client.post("/v1/databases/nowhere/adapt").status_code == 404
        bad = client.post("/v1/databases/planets/examples", content=b'{"question": "\xff", "sql": "x"}',
                          headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and bad.json()["detail"]
        surrogate = client.post("/v1/databases/planets/examples", content=b'{"question": "\\ud800", "sql": "x"}',
                                headers={"Content-Type": "application/json"})
        assert surrogate.status_code == 422
        assert client.post("/v1/databases/planets/examples", json={**ICE, "db": "x"}).status_code == 422
        assert client.get("/v1/adapt").json()["state"] == "idle"


def test_without_an_adapt_folder_the_routes_say_how_to_turn_adapting_on(model, tmp_path):
    """403 naming --adapt-dir on every route; /health tells the page that adapting is off."""
    with served(model, tmp_path, adapt=False) as client:
        assert client.get("/health").json()["adapt"] is False
        for r in (client.post("/v1/databases/planets/examples", json=ICE), client.post("/v1/databases/planets/adapt"),
                  client.get("/v1/adapt")):
            assert r.status_code == 403 and "--adapt-dir" in r.json()["detail"], r.text
    assert not (tmp_path / "adapt").exists()


def test_the_adapted_model_answers_its_database_and_one_job_runs_at_a_time(model, tmp_path):
    """The served model's rows for a question are wrong; once the corrected pair is saved and the
    adaptation has run (a second start meanwhile: 409), that database's answer gives the gold
    rows, while another database keeps the served model's answer."""
    server = served(model, tmp_path)
    gold = [list(row) for row in rows_of(tmp_path / "dbs" / "planets.sqlite", ICE["sql"])]
    with server as client:
        assert client.get("/health").json()["adapt"] is True
        before = answer(client, "planets", ICE["question"])
        assert sorted(before["rows"] or []) != gold
        assert client.post("/v1/databases/planets/examples", json=ICE).status_code == 201
        started = client.post("/v1/databases/planets/adapt")
        assert started.status_code == 202 and started.json()["state"] == "running", started.text
        # the job needs seconds to start its process and train: this second start comes while it runs
        again = client.post("/v1/databases/elsewhere/adapt")
        assert again.status_code == 409 and "one adaptation at a time" in again.json()["detail"]
        busy_save = client.post("/v1/databases/planets/examples", json=ICE)
        assert busy_save.status_code == 409
        job = finished_job(client)
        assert job["state"] == "succeeded", job
        assert (job["db_id"], job["step"], job["total"], job["error"]) == ("planets", STEPS, STEPS, None)
        after = answer(client, "planets", ICE["question"])
        assert sorted(after["rows"]) == gold
        assert answer(client, "elsewhere", ICE["question"])["sql"] == before["sql"]
        assert client.get("/health").json()["adapted"] == ["planets"]
    record = json.loads((tmp_path / "adapt" / "planets" / "adapt.json").read_text())
    assert (record["steps"], record["blend"]) == (STEPS, 0.5)  # adapt's default blend


def test_a_failed_adaptation_reports_why_and_keeps_the_served_model(model, tmp_path):
    """An examples file edited by hand into one that cannot be learned: the job fails with the
    file's line and reason (no server path), and the database keeps the served model."""
    with served(model, tmp_path) as client:
        before = answer(client, "planets", ICE["question"])
        (tmp_path / "adapt" / "planets.examples.jsonl").write_text(
            json.dumps({"question": "List the moon names.", "sql": "SELECT name FROM moons"}) + "\n")
        assert client.post("/v1/databases/planets/adapt").status_code == 202
        job = finished_job(client)
        assert job["state"] == "failed" and "planets.examples.jsonl:1: the SQL does not run" in job["error"], job
        assert str(tmp_path) not in job["error"]
        assert client.get("/health").json()["adapted"] == []
        assert answer(client, "planets", ICE["question"])["sql"] == before["sql"]
        assert client.post("/v1/databases/planets/adapt").status_code == 202  # the next job may start
        assert finished_job(client)["state"] == "failed"


@pytest.fixture
def never_serves(monkeypatch):
    """A refusal that broke would start serving and block the test: serving fails it instead."""
    import vantage_core.inference.serve as serve

    def serving(*args, **kwargs):
        raise AssertionError("vantage serve started serving instead of refusing")

    monkeypatch.setattr(serve, "run_server", serving)


@pytest.mark.parametrize("where, error", [
    ("{model}/adapted", "--adapt-dir {model}/adapted lies inside the folder it reads"),
    ("{model}/..", "contains the folder it reads"),
])
def test_an_adapt_folder_around_or_inside_the_model_is_refused(model, tmp_path, capsys, where, error, never_serves):
    """vantage serve stops before serving, in one line, when --adapt-dir overlaps the model's folder."""
    code, _, err = run_cli(["serve", "-m", str(model), "--adapt-dir", where.format(model=model)], capsys)
    assert code == 2
    assert_one_error_line(err, error.format(model=model))
    assert not (model / "adapted").exists()


def test_adapting_an_ensemble_is_refused(model, tmp_path, capsys, never_serves):
    code, _, err = run_cli(["serve", "-m", str(model), "-m", str(model), "--adapt-dir", str(tmp_path / "a")], capsys)
    assert code == 2 and "--adapt-dir adapts one model" in err


@pytest.mark.parametrize("blend", ["0", "2"])
def test_an_adapt_blend_outside_its_range_is_refused(model, tmp_path, capsys, never_serves, blend):
    code, _, err = run_cli(["serve", "-m", str(model), "--adapt-dir", str(tmp_path / "a"), "--adapt-blend", blend], capsys)
    assert code == 2 and "--adapt-blend" in err and not (tmp_path / "a").exists()
