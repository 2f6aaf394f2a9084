"""The engine and `vantage generate` on a tiny untrained model folder and a real SQLite file."""

import json

import pytest
from click.testing import CliRunner

from infer_fixture import make_db, make_model_dir, make_pointer_model_dir
from vantage_core.cli import cli, main
from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.inference.constraints import schema_violations
from vantage_core.inference.engine import Engine, Generation
from vantage_core.model.io import resolve_model_dir
from vantage_core.sql.format import formatted_sql


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
    with pytest.raises(DataError, match=r"running the SQL \(run\) needs a database file"):
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


@pytest.fixture(scope="module")
def pointer(tmp_path_factory):
    """An untrained pointer model (data.target: actions) and a database."""
    root = tmp_path_factory.mktemp("infer-pointer")
    return make_pointer_model_dir(root / "model"), make_db(root / "concerts.sqlite")


def test_cli_generate_shows_the_models_sql_formatted(pointer):
    """`vantage generate` prints the SQL a model writes (``select from concert ...``) formatted for
    people, as text, with --candidates and in --json; the engine's own answer stays the model's text."""
    model, db = pointer
    g = Engine.load(model).generate("how many singers?", db_path=db)
    shown = formatted_sql(g.sql)
    assert g.sql.startswith("select ") and shown.startswith("SELECT ") and shown != g.sql
    runner = CliRunner()
    res = runner.invoke(cli, ["generate", "-m", str(model), "--db", str(db), "how many singers?", "--candidates"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == shown
    listed = [line[len("  * -1234.567  "):] for line in res.stderr.splitlines() if line.startswith("  ")]
    assert listed == [formatted_sql(c.sql) for c in g.candidates]
    res = runner.invoke(cli, ["generate", "-m", str(model), "--db", str(db), "how many singers?", "--json"])
    out = json.loads(res.stdout)
    assert out["sql"] == shown and [c["sql"] for c in out["candidates"]] == listed


def test_a_constraint_for_another_output_space_is_refused_up_front(engine, pointer):
    """sql_schema masks SQL text tokens, sql_actions a pointer model's actions: each one on the
    other kind of model is refused before decoding, naming the constraints that fit."""
    ptr = Engine.load(pointer[0])
    with pytest.raises(ConfigError, match=r"constraint 'sql_schema' masks the output of a model that writes SQL "
                                          r"text .* Constraints that fit it: sql_actions, none"):
        ptr.options(constraint={"name": "sql_schema"})
    with pytest.raises(ConfigError, match="points at schema items .* Constraints that fit it: sql_schema, none"):
        engine.options(constraint={"name": "sql_actions"})
    with pytest.raises(ConfigError, match="unknown constraint 'regex'; the ones that fit this model: sql_actions, none"):
        ptr.options(constraint={"name": "regex"})
    assert ptr.generate("how many singers?", db_path=pointer[1], constraint={"name": "sql_actions"}).sql
    assert ptr.fitting_constraints() == ["sql_actions"] and engine.fitting_constraints() == ["sql_schema"]


def test_cli_generate_refuses_a_constraint_that_does_not_fit_in_one_line(pointer, capsys):
    """`vantage generate --constraint sql_schema` on a pointer model: one error line, no traceback."""
    model, db = pointer
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "-m", str(model), "--db", str(db), "--constraint", "sql_schema", "how many singers?"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        "error: constraint 'sql_schema' masks the output of a model that writes SQL text (data.target: tokens); "
        "this model points at schema items (data.target: actions). Constraints that fit it: sql_actions, none"]


def test_execution_guided_choice_steps_aside_without_a_database(engine, paths):
    """A schema without a database: execution-guided choice has nothing to run, so the model's
    first candidate is given and the generation says why (``note``); with a database, no note."""
    _, db = paths
    g = engine.generate("how many singers?", schema=engine.schema_of(db), execution_guided=True,
                        decoding="beam", beam_size=2)
    from vantage_core.inference.engine import UNGUIDED

    assert g.note == UNGUIDED and g.choice == "top" and g.chosen == 0
    assert not any(c.executed for c in g.candidates)
    g = engine.generate("how many singers?", db_path=db, execution_guided=True, decoding="beam", beam_size=2)
    assert g.note is None and all(c.executed for c in g.candidates[:g.chosen + 1])


def test_a_replaced_database_file_is_read_again(engine, tmp_path):
    """The schema cache follows the file: written anew (another inode, size, time), it is read again."""
    import os
    import sqlite3

    db = make_db(tmp_path / "shop.sqlite")
    assert {t.name for t in engine.schema_of(db).tables} == {"singer", "concert"}
    fresh = tmp_path / "fresh.sqlite"
    con = sqlite3.connect(fresh)
    con.execute("CREATE TABLE product (product_id INTEGER PRIMARY KEY, title TEXT)")
    con.commit()
    con.close()
    os.replace(fresh, db)
    assert [t.name for t in engine.schema_of(db).tables] == ["product"]
    assert [t.name for t in engine.schema_of(f"sqlite:///{db}").tables] == ["product"]


def test_result_cells_as_strict_json():
    """Bytes become {"$base64": ...}, non-finite floats the strings Infinity / -Infinity / NaN;
    a generation's JSON form holds no NaN anywhere (a -inf log-probability becomes None)."""
    from vantage_core.inference.engine import json_cell

    assert json_cell(b"\xff\xfe\x00\x80") == {"$base64": "//4AgA=="}
    assert [json_cell(float(x)) for x in ("inf", "-inf", "nan")] == ["Infinity", "-Infinity", "NaN"]
    assert [json_cell(v) for v in (None, 1, 2.5, "x")] == [None, 1, 2.5, "x"]
    from vantage_core.inference.engine import Candidate

    g = Generation(sql="SELECT b FROM t", candidates=[Candidate("SELECT b FROM t", float("-inf"), False)], chosen=0,
                   rows=[[b"\x00", float("nan")]])
    text = json.dumps(g.to_json(), allow_nan=False)
    assert json.loads(text)["rows"] == [[{"$base64": "AA=="}, "NaN"]]
    assert json.loads(text)["candidates"][0]["logprob"] is None


def test_generate_takes_a_question_with_its_database_and_extras(engine, paths):
    """A Question (its database and a dataset example's extras) is answered as generate_many
    answers it; a database given beside it as well is refused."""
    from vantage_core.inference.engine import Question

    _, db = paths
    q = Question("how many singers?", db, extras={"evidence": "a singer is a person who sings"})
    one = engine.generate(q, decoding="beam")
    together = engine.generate_many([q], options=engine.options(decoding="beam"))[0]
    assert one.candidates == together.candidates and one.sql == together.sql
    with pytest.raises(TypeError, match="give the database and schema in the Question"):
        engine.generate(q, db_path=db)
