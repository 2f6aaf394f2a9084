"""``vantage adapt``: a tiny trained pointer model adapted to a new SQLite database from a few
question/SQL pairs; the checks of each pair before anything is written; the output folder; the
datasets it trains on (``pairs``, ``templated``) and ``train.init_from``."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest

from test_cli_errors import assert_one_error_line, run_cli
from vantage_core.config import load_config
from vantage_core.errors import ConfigError, DataError, VantageError

POINTER = Path(__file__).parent / "fixtures" / "train_tiny_pointer.yaml"
TOKENS = Path(__file__).parent / "fixtures" / "train_tiny.yaml"
QUIET = {"progress": False, "echo": lambda *_: None}
QUIET_ECHO = {"echo": lambda *_: None}
PLAIN = ["train.eval_every=0", "train.save_every=0", "data.validation=[]"]

PLANETS = """
CREATE TABLE planets (id INTEGER PRIMARY KEY, planet_name TEXT, galaxy TEXT, mass INTEGER, radius INTEGER);
CREATE TABLE moons (id INTEGER PRIMARY KEY, moon_name TEXT, surface TEXT, orbit_days INTEGER,
                    planet_id INTEGER REFERENCES planets(id));
INSERT INTO planets VALUES (1, 'Mercury', 'Milky', 33, 2440), (2, 'Venus', 'Milky', 487, 6052),
    (3, 'Earth', 'Milky', 597, 6371), (4, 'Mars', 'Milky', 64, 3390), (5, 'Jupiter', 'Milky', 189800, 69911),
    (6, 'Zorg', 'Andromeda', 1200, 8000), (7, 'Quax', 'Andromeda', 900, 7000);
INSERT INTO moons VALUES (1, 'Moon', 'rock', 27, 3), (2, 'Phobos', 'rock', 1, 4), (3, 'Deimos', 'dust', 2, 4),
    (4, 'Io', 'lava', 2, 5), (5, 'Europa', 'ice', 4, 5), (6, 'Ganymede', 'ice', 7, 5), (7, 'Callisto', 'ice', 17, 5),
    (8, 'Zed', 'ice', 30, 6);
"""
ICE = {"question": "List the moon_name of moons whose surface is ice.",
       "sql": "SELECT moon_name FROM moons WHERE surface = 'ice'"}
PAIRS = [{"question": "How many moons are there?", "sql": "SELECT count(*) FROM moons"}, ICE,
         {"question": "List the planet_name of planets with mass above 500.",
          "sql": "SELECT planet_name FROM planets WHERE mass > 500"}]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data cache for the module (the synthetic databases and features are made once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(tmp_path_factory.mktemp("adapt_cache")))
        yield


@pytest.fixture(scope="module")
def base_run(cache, tmp_path_factory) -> Path:
    """The tiny pointer model trained for 60 steps on generated databases (seconds)."""
    from vantage_core.train.run import train

    folder = tmp_path_factory.mktemp("base") / "run"
    train(load_config(POINTER, [f"run.dir={folder}", "train.steps=60", *PLAIN]), **QUIET)
    return folder


def planets_db(folder: Path) -> Path:
    """A database with table and column names the base model never saw."""
    path = folder / "planets.sqlite"
    con = sqlite3.connect(path)
    con.executescript(PLANETS)
    con.commit()
    con.close()
    return path


def pairs_file(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def rows_of(db: Path, sql: str) -> list:
    con = sqlite3.connect(db)
    try:
        return sorted(con.execute(sql).fetchall())
    finally:
        con.close()


def answer_rows(model: Path, db: Path, question: str) -> list | None:
    """The rows of the SQL the model writes for ``question`` (None when it does not run)."""
    from vantage_core.inference.engine import Engine

    generation = Engine.load(model).generate(question, db_path=db, run=True)
    return None if generation.error else sorted(tuple(r) for r in generation.rows)


def request(base_run, db, out, examples=None, **options):
    from vantage_core.train.adapt import AdaptRequest

    return AdaptRequest(model=str(base_run), db=str(db), out=str(out), examples=examples and str(examples),
                        progress=False, **options)


def nothing_written(out: Path) -> bool:
    """Neither ``out`` nor a temporary sibling of it exists."""
    return not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def test_the_adapted_model_answers_a_question_the_model_got_wrong(base_run, tmp_path, capsys):
    """On a database with names it never saw, the trained model's SQL for a question gives the
    wrong rows; `vantage adapt` on three pairs over that database (the question among them)
    gives a run that the one loader reads and whose SQL for it gives the gold rows."""
    db, gold = planets_db(tmp_path), rows_of(tmp_path / "planets.sqlite", ICE["sql"])
    assert answer_rows(base_run, db, ICE["question"]) != gold
    out = tmp_path / "planets_run"
    code, stdout, err = run_cli(["adapt", "-m", str(base_run), "--db", str(db), "--examples",
                                 str(pairs_file(tmp_path / "pairs.jsonl", PAIRS)), "-o", str(out), "--steps", "40",
                                 "--synthetic", "50", "--no-progress"], capsys)
    assert code == 0, err
    assert f"{out}: adapted in" in stdout
    assert answer_rows(out, db, ICE["question"]) == gold
    record = json.loads((out / "adapt.json").read_text())
    assert [s["name"] for s in record["sources"]] == ["pairs", "templated", "synthetic"]  # replay: its own data
    saved = load_config(out / "config.yaml")
    assert saved.run.dir == str(out) and saved.train.init_from == record["model"] and saved.train.steps == 40
    assert load_config(out / "checkpoints" / "last" / "config.yaml").run.dir == str(out)


def test_without_pairs_it_adapts_on_synthetic_pairs_only(base_run, tmp_path):
    """No --examples: the run trains on the templates' pairs over the database (and replay)."""
    from vantage_core.inference.engine import Engine
    from vantage_core.train.adapt import adapt

    out = tmp_path / "synthetic_only"
    summary = adapt(request(base_run, planets_db(tmp_path), out, synthetic=30, steps=3, replay=0.0), **QUIET_ECHO)
    assert [s["name"] for s in summary["adapt"]["sources"]] == ["templated"]
    assert summary["steps"] == 3 and Engine.load(out).config.train.init_from == summary["adapt"]["model"]


def test_each_pair_that_cannot_be_learned_is_named_by_its_line_and_nothing_is_written(base_run, tmp_path):
    """SQL that does not run, SQL the action codec cannot express, a literal the model's
    vocabulary lacks and a row without SQL: one line each, file:line and why; no folder."""
    from vantage_core.train.adapt import adapt

    examples = pairs_file(tmp_path / "pairs.jsonl", [
        PAIRS[0],
        {"question": "List the moon names.", "sql": "SELECT name FROM moons"},
        {"question": "Pairs of moons of one planet.",
         "sql": "SELECT a.moon_name FROM moons AS a JOIN moons AS b ON a.planet_id = b.planet_id"},
        {"question": "List the moons of the first planet.", "sql": "SELECT moon_name FROM moons WHERE planet_id = 987"},
        {"question": "No SQL here."}])
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        adapt(request(base_run, planets_db(tmp_path), out, examples, steps=2), **QUIET_ECHO)
    message = str(info.value)
    for line, why in ((2, "the SQL does not run on planets.sqlite: "), (3, "the action codec cannot express"),
                      (4, "the model's action vocabulary has no '987'"), (5, "missing sql")):
        assert re.search(rf"^{re.escape(str(examples))}:{line}: .*{re.escape(why)}", message, re.M), (line, message)
    assert "4 of the pairs" in message and nothing_written(out)


@pytest.mark.parametrize("content, where", [
    (b'{"question": "How many moons?", "sql": "SELECT count(*) FROM moons"}\n{"question": \n', ":2: malformed JSON"),
    (b'{"question": "How many moons?", "sql": "SELECT count(*) FROM moons"}\n{"question": "\xff"}\n', ":2:15: not valid UTF-8"),
], ids=["not-json", "not-utf8"])
def test_a_line_that_is_not_json_is_one_error_line(base_run, tmp_path, capsys, content, where):
    """The command prints one error line naming the file and line, no traceback, and writes nothing."""
    examples = tmp_path / "pairs.jsonl"
    examples.write_bytes(content)
    out = tmp_path / "out"
    code, _, err = run_cli(["adapt", "-m", str(base_run), "--db", str(planets_db(tmp_path)), "--examples",
                            str(examples), "-o", str(out), "--no-progress"], capsys)
    assert code == 2
    assert_one_error_line(err, f"{examples}{where}")
    assert nothing_written(out)


def test_notes_hide_columns_from_the_pairs(base_run, tmp_path):
    """--notes are the schema the model sees: a pair naming a column they hide cannot be learned."""
    from vantage_core.train.adapt import adapt

    notes = tmp_path / "planets.yaml"
    notes.write_text("tables:\n  moons:\n    columns:\n      surface: {hide: true}\n")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"pairs.jsonl:1: the action codec cannot express this SQL \(unknown name surface\)"):
        adapt(request(base_run, planets_db(tmp_path), out, pairs_file(tmp_path / "pairs.jsonl", [ICE]), notes=str(notes)),
              **QUIET_ECHO)
    assert nothing_written(out)


@pytest.mark.parametrize("where, relation", [("{run}", "is"), ("{run}/adapted", "lies inside"),
                                             ("{run}/..", "contains")])
def test_an_output_that_overlaps_the_model_is_refused(base_run, tmp_path, capsys, where, relation):
    """-o may be neither the model's folder, nor inside it, nor around it; the model is left as it was."""
    before = sorted(p.relative_to(base_run) for p in base_run.rglob("*"))
    code, _, err = run_cli(["adapt", "-m", str(base_run), "--db", str(planets_db(tmp_path)), "-o",
                            where.format(run=base_run), "--overwrite", "--no-progress"], capsys)
    assert code == 2
    assert_one_error_line(err, f"{relation} the folder it reads")
    assert sorted(p.relative_to(base_run) for p in base_run.rglob("*")) == before


def test_an_existing_output_is_kept_without_overwrite(base_run, tmp_path):
    """-o holding something: refused without --overwrite, and with it unless that is an earlier run."""
    from vantage_core.train.adapt import adapt

    db, out = planets_db(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(VantageError, match="already exists; pass --overwrite"):
        adapt(request(base_run, db, out, synthetic=10, steps=1), **QUIET_ECHO)
    with pytest.raises(VantageError, match="holds files that are not a run"):
        adapt(request(base_run, db, out, synthetic=10, steps=1, overwrite=True), **QUIET_ECHO)
    assert (out / "keep.txt").read_text() == "mine"


def test_an_interrupted_adaptation_leaves_the_earlier_run(base_run, tmp_path, monkeypatch):
    """Ctrl-C during the steps of an --overwrite: the earlier adapted run at -o stays whole, and no
    temporary folder is left beside it."""
    from test_train_run import interrupt_after
    from vantage_core.train.adapt import adapt

    db, out = planets_db(tmp_path), tmp_path / "out"
    adapt(request(base_run, db, out, synthetic=10, steps=2), **QUIET_ECHO)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    interrupt_after(monkeypatch, 2)
    with pytest.raises(VantageError, match=f"adaptation interrupted at step 2; {re.escape(str(out))} is as it was"):
        adapt(request(base_run, db, out, synthetic=10, steps=4, seed=1, overwrite=True), **QUIET_ECHO)
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


def test_a_token_model_is_adapted_too(cache, tmp_path):
    """A token model (data.target: tokens): its pairs are checked against its lengths, and the
    adapted run loads."""
    from vantage_core.inference.engine import Engine
    from vantage_core.train.adapt import adapt
    from vantage_core.train.run import train

    base = tmp_path / "tokens"
    train(load_config(TOKENS, [f"run.dir={base}", "train.steps=2", *PLAIN]), **QUIET)
    db, out = planets_db(tmp_path), tmp_path / "out"
    too_long = {"question": "Moons?", "sql": "SELECT " + ", ".join(["moon_name"] * 60) + " FROM moons"}
    with pytest.raises(DataError, match=r"pairs.jsonl:2: the SQL is longer than the model writes"):
        adapt(request(base, db, out, pairs_file(tmp_path / "pairs.jsonl", [PAIRS[0], too_long]), steps=2), **QUIET_ECHO)
    adapt(request(base, db, out, pairs_file(tmp_path / "pairs.jsonl", PAIRS), synthetic=10, steps=2), **QUIET_ECHO)
    assert Engine.load(out).config.data.target == "tokens"


def test_replay_is_skipped_where_the_training_data_does_not_load(tmp_path):
    """A model whose training data is gone here (a folder holds no data) adapts without replay, saying why."""
    from vantage_core.plugins import registry
    from vantage_core.train.adapt import replay_sources

    base = load_config(None, base={"data": {"train": [{"name": "pairs", "path": str(tmp_path / "gone.jsonl"),
                                                        "db": str(planets_db(tmp_path))}]}})
    said = []
    assert replay_sources(base, 0.2, registry(), said.append) == []
    assert said and "replay: none" in said[0] and "gone.jsonl" in said[0]


# ---------------------------------------------------------------------------- what it trains on

def test_templated_pairs_run_on_the_database_and_join_through_its_foreign_keys(tmp_path):
    """The synthetic templates over a database of the user's: every query runs and returns a
    value, the joins follow moons.planet_id -> planets.id, left-out templates are never drawn."""
    from vantage_core.plugins import registry

    db = planets_db(tmp_path)
    examples = registry().build("dataset", "templated", db=str(db), n=80, leave_out=["count"]).load("train").examples
    assert len(examples) == 80 and len({e.question for e in examples}) == 80
    assert "count" not in {e.extras["template"] for e in examples}
    assert any("ON T1.planet_id = T2.id" in e.sql for e in examples)
    for e in examples:
        assert rows_of(db, e.sql), e.sql


# What the synthetic dataset gave for these settings before its templates learned to write over
# other databases (the quickstart's data): the same questions, SQL and templates, in the same order.
SYNTHETIC_10x10 = "59c6e20f807911bb8d84773339e500a27c760628ab919a54ba5d21d937c531ec"


def test_the_synthetic_dataset_still_writes_the_same_pairs(tmp_path):
    """The generated databases' pairs are unchanged (their SHA-256), and TEMPLATES names every template."""
    import hashlib
    import random

    from vantage_plugins.datasets import synthetic

    dataset = synthetic.SyntheticDataset(n_databases=10, examples_per_db=10, out_dir=str(tmp_path))
    rows = [(e.question, e.sql, e.extras["template"]) for split in dataset.splits for e in dataset.load(split).examples]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest() == SYNTHETIC_10x10
    _, _, parent, child = synthetic.generate_database(0, 1)
    rng = random.Random(0)
    assert {synthetic.make_pair(rng, parent, child)[0] for _ in range(3000)} == synthetic.TEMPLATES


def test_templated_names_what_it_cannot_use(tmp_path):
    from vantage_core.plugins import registry

    db = tmp_path / "keys.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE codes (id INTEGER PRIMARY KEY, label TEXT)")  # no number column to ask about
    con.commit()
    con.close()
    report = registry().build("dataset", "templated", db=str(db)).load("train")
    assert report.examples == [] and "no pairs: no table" in report.summary("templated", "train")
    with pytest.raises(DataError, match="leave_out: unknown template.*countt"):
        registry().build("dataset", "templated", db=str(db), leave_out=["countt"])


def test_sampled_sources_keep_the_same_random_examples(cache):
    """``sample: N`` keeps N examples drawn at random, the same ones at every load."""
    from vantage_core.config import DataSource
    from vantage_core.data.pipeline import load_source

    spec = DataSource(name="synthetic", n_databases=6, examples_per_db=8, sample=10)
    first, second = (load_source(spec, "train")[0].examples for _ in range(2))
    everything = load_source(DataSource(name="synthetic", n_databases=6, examples_per_db=8), "train")[0].examples
    assert [e.id for e in first] == [e.id for e in second] and len(first) == 10
    assert [e.id for e in first] != [e.id for e in everything[:10]]


def test_init_from_must_name_a_model_this_config_can_start_from(base_run, tmp_path):
    """train.init_from: a missing folder, or weights of another shape, is one error naming the field."""
    from vantage_core.train.run import build_run, initial_model

    with pytest.raises(ConfigError, match=r"^train.init_from: .*no such folder"):
        initial_model(load_config(POINTER, [f"train.init_from={tmp_path / 'none'}"]))
    wider = load_config(POINTER, [f"run.dir={tmp_path / 'wide'}", f"train.init_from={base_run}", "model.d_model=64",
                                  *PLAIN])
    with pytest.raises(ConfigError, match=r"^train.init_from: .*does not fit"):
        build_run(wider, **QUIET)


def test_the_saved_weights_blend_the_fine_tuned_ones_with_the_models_own(base_run, tmp_path):
    """With --blend 0.25 each saved weight is a quarter of the one fine-tuned alone (--blend 1,
    the same seed and data) plus three quarters of the model's own; the blend is recorded."""
    import mlx.core as mx

    from vantage_core.model.io import resolve_model_dir
    from vantage_core.train.adapt import adapt

    db = planets_db(tmp_path)
    options = {"synthetic": 30, "steps": 3, "replay": 0.0, "seed": 1}
    adapt(request(base_run, db, tmp_path / "tuned", blend=1.0, **options), **QUIET_ECHO)
    summary = adapt(request(base_run, db, tmp_path / "blended", blend=0.25, **options), **QUIET_ECHO)
    assert summary["adapt"]["blend"] == 0.25
    weights = {name: mx.load(str(resolve_model_dir(tmp_path / name) / "model.safetensors")) for name in ("tuned", "blended")}
    own = mx.load(str(resolve_model_dir(base_run) / "model.safetensors"))
    moved = [name for name in own if not mx.array_equal(weights["tuned"][name], own[name])]
    assert moved  # fine-tuning changed weights, so the check below can tell a blend from either side
    for name, weight in weights["blended"].items():
        assert mx.allclose(weight, 0.25 * weights["tuned"][name] + 0.75 * own[name], atol=1e-6), name


@pytest.mark.parametrize("blend", ["0", "1.5", "nan"])
def test_a_blend_outside_its_range_is_one_error_line(base_run, tmp_path, capsys, blend):
    out = tmp_path / "never"
    code, _, err = run_cli(["adapt", "-m", str(base_run), "--db", str(planets_db(tmp_path)), "-o", str(out),
                            "--blend", blend, "--no-progress"], capsys)
    assert code != 0 and "--blend" in err and nothing_written(out)
