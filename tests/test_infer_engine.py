"""The engine and `vantage generate` on a tiny untrained model folder and a real SQLite file."""

import json

import pytest
from click.testing import CliRunner

from infer_fixture import make_db, make_model_dir
from vantage_core.cli import cli
from vantage_core.errors import DataError, VantageError
from vantage_core.inference.constraints import schema_violations
from vantage_core.inference.engine import Engine, resolve_model_dir


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    return make_model_dir(root / "model"), make_db(root / "concerts.sqlite")


@pytest.fixture(scope="module")
def engine(paths):
    return Engine.load(paths[0])


def test_every_mode_gives_candidates_and_routing(engine, paths):
    _, db = paths
    for mode, n in (("greedy", 1), ("beam", 3), ("sample", 3)):
        g = engine.generate("how many singers?", db_path=db, decoding=mode, routing=True)
        assert len(g.candidates) == n and g.sql == g.candidates[g.chosen].sql
        assert len(g.routing) == g.n_tokens == len(g.tokens)
        layer = g.routing[0][0]
        assert len(layer["experts"]) == 2 and all(0 <= e < 4 for e in layer["experts"])
        assert abs(sum(layer["weights"]) - 1) < 1e-3


def test_constrained_output_names_only_schema_items(engine, paths):
    _, db = paths
    schema = engine.schema_of(db)
    for q in ("how many singers?", "names of singers older than 30", "which concerts were in 2014?"):
        g = engine.generate(q, db_path=db, decoding="beam", constraint={"name": "sql_schema"}, max_new_tokens=48)
        for c in g.candidates:
            if c.finished:
                assert schema_violations(c.sql, schema) == [], c.sql


def test_execution_guided_choice_runs_the_candidates(engine, paths, monkeypatch):
    """The first candidate that runs is chosen; its rows come back."""
    from vantage_core.inference.decoding import Hypothesis

    _, db = paths
    tok = engine.tokenizer
    texts = ["SELECT nonsense FROM", "SELECT name FROM singer WHERE age > 100", "SELECT name FROM singer"]
    fake = [Hypothesis(tok.encode(t), -float(i), True) for i, t in enumerate(texts)]
    monkeypatch.setattr("vantage_core.inference.engine.decode", lambda *a, **k: fake)
    g = engine.generate("q", db_path=db, execution_guided=True, run=True)
    assert g.chosen == 1 and g.rows == [] and g.candidates[0].ok is False and g.candidates[0].error
    g = engine.generate("q", db_path=db, execution_guided=True, require_rows=True, run=True)
    assert g.chosen == 2 and sorted(r[0] for r in g.rows) == ["Ann", "Bo", "Cy"]
    g = engine.generate("q", db_path=db, run=True)  # not guided: the model's favourite, which fails
    assert g.chosen == 0 and g.rows is None and g.error


def test_bad_requests_raise_clear_errors(engine, paths, tmp_path):
    _, db = paths
    with pytest.raises(DataError, match="empty"):
        engine.generate("  ", db_path=db)
    with pytest.raises(DataError, match="no such SQLite file"):
        engine.generate("q", db_path=tmp_path / "nope.sqlite")
    with pytest.raises(DataError, match="needs a database file"):
        engine.generate("q", schema=engine.schema_of(db), run=True)
    with pytest.raises(VantageError, match="decoding"):
        engine.generate("q", db_path=db, decoding="nucleus")
    with pytest.raises(VantageError, match="neither model.safetensors"):
        resolve_model_dir(tmp_path)


def test_cli_generate_prints_sql_rows_and_reads_a_file(paths, tmp_path):
    model, db = paths
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "--checkpoint", str(model), "--db", str(db), "--run",
                              "--constraint", "sql_schema", "how many singers?"])
    # exit status 1 when the (untrained) model's SQL fails to run, 0 when it runs
    assert res.exit_code == (1 if "error: the SQL did not run" in res.output else 0), res.output
    assert res.output.strip()
    qfile = tmp_path / "q.txt"
    qfile.write_text("how many singers?\n# a comment\n\nlist concerts\n")
    res = runner.invoke(cli, ["generate", "-m", str(model), "--db", str(db), "--questions", str(qfile), "--json",
                              "--decoding", "beam", "--beam-size", "2"])
    assert res.exit_code == 0, res.output
    lines = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [x["question"] for x in lines] == ["how many singers?", "list concerts"]
    assert all(len(x["candidates"]) == 2 for x in lines)
