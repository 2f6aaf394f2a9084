"""``benchmarks/adapt_curve.py`` on the tiny pointer model and two databases made here: each
database's pool and scored questions, the result files and their reuse, and the report."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from test_adapt import PAIRS, POINTER, QUIET, PLAIN, pairs_file, planets_db
from vantage_core.config import load_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import adapt_curve  # noqa: E402

SURFACES = ("rock", "dust", "lava", "ice")
QUESTIONS = [*PAIRS,
             *({"question": f"List the moon_name of moons whose surface is {s}.",
                "sql": f"SELECT moon_name FROM moons WHERE surface = '{s}'"} for s in SURFACES),
             *({"question": f"How many moons have surface {s}?",
                "sql": f"SELECT count(*) FROM moons WHERE surface = '{s}'"} for s in SURFACES),
             {"question": "List the nothing of moons.", "sql": "SELECT nothing FROM moons"},  # does not run
             {"question": "How many planets are there?", "sql": "SELECT count(*) FROM planets"}]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """The tiny pointer model trained for 6 steps on generated databases (seconds), with its
    own data cache."""
    from vantage_core.train.run import train

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(tmp_path_factory.mktemp("curve_cache")))
        folder = tmp_path_factory.mktemp("base") / "run"
        train(load_config(POINTER, [f"run.dir={folder}", "train.steps=6", *PLAIN]), **QUIET)
        yield folder


def held_out(folder: Path) -> list:
    """The 13 questions above over ``planets`` and the first 8 of them over ``worlds`` (the same
    tables), as examples with ids unique across both."""
    from vantage_core.config import DataSource
    from vantage_core.data.pipeline import load_source

    examples = []
    for name, questions in (("planets", QUESTIONS), ("worlds", QUESTIONS[:8])):
        (folder / name).mkdir()
        db = planets_db(folder / name).rename(folder / name / f"{name}.sqlite")
        rows = pairs_file(folder / name / "questions.jsonl", questions)
        report, _ = load_source(DataSource(name="pairs", path=str(rows), db=str(db)), "validation")
        examples += [dataclasses.replace(e, id=f"{name}/{i}") for i, e in enumerate(report.examples)]
    return examples


def test_the_split_is_disjoint_the_same_for_every_k_and_results_are_reused(tiny_run, tmp_path):
    """On one database with k 0 and 2: the pool holds only questions adapt accepts (never the
    one whose SQL does not run), the scored set is every other question of the database and is
    the same for both k, k=2 adapts on the first two of the pool; the forgetting sample holds no
    question of the database; a second call finds both result files and rewrites neither; the
    report has a row per k."""
    held = held_out(tmp_path)
    settings = adapt_curve.CurveSettings(model=str(tiny_run), out=tmp_path / "curve", ks=[0, 2], steps=2,
                                         synthetic=10, pool=4, min_scored=5, forget_sample=6, progress=False)
    plan = adapt_curve.run_curve(settings, held, ["planets"], echo=lambda *_: None)
    pool, scored = plan["databases"]["planets"]["pool"], plan["databases"]["planets"]["scored"]
    planets = {e.id: e for e in held if e.db_id == "planets"}
    assert len(pool) == 4 and not set(pool) & set(scored) and set(pool) | set(scored) == set(planets)
    assert all(planets[i].sql != "SELECT nothing FROM moons" for i in pool)
    results = {k: json.loads(adapt_curve.result_path(settings.out, "planets", k, 0).read_text()) for k in (0, 2)}
    assert results[0]["scored"] == results[2]["scored"] == scored
    assert results[0]["pairs"] == [] and results[2]["pairs"] == pool[:2]
    assert results[2]["forget"] and all(i.startswith("worlds/") for i in results[2]["forget"])
    assert results[2]["adapt"]["steps"] == 2 and results[2]["adapt"]["blend"] == results[2]["blend"] == 0.5
    assert 0 <= results[2]["ex"] <= 1
    assert not (settings.out / "runs" / "planets__k2__s0").exists()  # deleted once scored
    written = {k: adapt_curve.result_path(settings.out, "planets", k, 0).stat().st_mtime_ns for k in (0, 2)}
    adapt_curve.run_curve(settings, held, ["planets"], echo=lambda *_: None)
    assert {k: adapt_curve.result_path(settings.out, "planets", k, 0).stat().st_mtime_ns for k in (0, 2)} == written
    report = adapt_curve.write_report(settings.out).read_text()
    assert "adapt --steps 2 --synthetic 10 --replay 0.2 --blend 0.5 (as recorded in the results)" in report
    curve, sources = report.split("Where the gain comes from")
    assert [line.split(" | ")[0] for line in curve.splitlines() if line.startswith("| 0 ") or line.startswith("| 2 ")] \
        == ["| 0", "| 2"]
    # no question is asked again at k=0; at k=2, those whose SQL is one of the two pairs'
    asked = {adapt_curve.sql_key(planets[i].sql) for i in pool[:2]}
    repeats = [i for i in scored if adapt_curve.sql_key(planets[i].sql) in asked]
    assert results[0]["scored_repeats"] == [] and results[2]["scored_repeats"] == repeats
    assert [line.split(" | ")[4] for line in sources.splitlines() if line.startswith("| 0 ") or line.startswith("| 2 ")] \
        == ["0", str(len(repeats))]
    assert (settings.out / "adapt_curve.png").stat().st_size > 0


def test_a_small_database_is_skipped_and_a_failing_point_is_listed(tiny_run, tmp_path):
    """With a pool of 4 and at least 5 questions to score, ``worlds`` (8 questions) is skipped
    with why; on ``planets``, k=0 without synthetic pairs gives adapt nothing to train on: the
    point is said and listed as failed in plan.json, with no result file; with no result, the
    report is refused."""
    said = []
    settings = adapt_curve.CurveSettings(model=str(tiny_run), out=tmp_path / "curve", ks=[0], steps=2, synthetic=0,
                                         pool=4, min_scored=5, forget_sample=0, progress=False)
    plan = adapt_curve.run_curve(settings, held_out(tmp_path), None, echo=said.append)
    assert list(plan["skipped"]) == ["worlds"] and list(plan["databases"]) == ["planets"]
    assert said[0] == "skipped worlds: 4 questions left to score after the pool of 4 (fewer than 5)"
    assert "nothing to adapt on" in plan["failed"]["planets__k0__s0"]
    assert any(line.startswith("planets k=0 seed=0: failed") for line in said)
    assert not adapt_curve.result_path(settings.out, "planets", 0, 0).exists()
    assert json.loads((settings.out / "plan.json").read_text())["failed"] == plan["failed"]
    (settings.out / "results").mkdir(exist_ok=True)
    with pytest.raises(SystemExit, match="no result yet"):
        adapt_curve.write_report(settings.out)


def test_a_scored_question_asked_again_is_one_whose_sql_is_a_pairs_up_to_case_and_spacing():
    """Only the first k pairs count, and the SQL is compared ignoring case, spacing and a final
    semicolon, nothing else."""
    from types import SimpleNamespace as Q

    pool = [{"id": "p0", "sql": "SELECT count(*) FROM moons;"}, {"id": "p1", "sql": "SELECT name FROM planets"}]
    scored = [Q(id="a", sql="select  COUNT(*)\nfrom moons"), Q(id="b", sql="SELECT name FROM planets"),
              Q(id="c", sql="SELECT count(*) FROM moons WHERE 1")]
    split = adapt_curve.DatabaseSplit("db", "db.sqlite", pool, scored)
    assert adapt_curve.repeated_ids(split, 0) == []
    assert adapt_curve.repeated_ids(split, 1) == ["a"]
    assert adapt_curve.repeated_ids(split, 2) == ["a", "b"]


def test_the_report_splits_the_net_gain_between_questions_asked_again_and_the_rest():
    """Two databases, two seeds: per seed the questions gained and lost are summed over the
    databases, on the repeats and on the rest apart, then averaged over the seeds; a result
    without the split (written before it was recorded) is left out of that table."""
    base = {i: {"exec": v} for i, v in {"a1": 0, "a2": 0, "a3": 1, "b1": 0, "b2": 1}.items()}

    def result(db, seed, scored, repeats, right):
        return {"db": db, "k": 10, "seed": seed, "scored": scored, "scored_repeats": repeats,
                "per_example": {i: {"exec": int(i in right)} for i in scored}}

    results = [result("a", 0, ["a1", "a2", "a3"], ["a1"], {"a1", "a2", "a3"}),  # repeats +1, rest +1 (a2 won)
               result("b", 0, ["b1", "b2"], [], {"b1"}),  # rest 0: b1 won, b2 lost
               result("a", 1, ["a1", "a2", "a3"], ["a1"], {"a1", "a3"}),  # repeats +1, rest 0
               result("b", 1, ["b1", "b2"], [], {"b2"}),  # rest 0
               {"db": "a", "k": 5, "seed": 0, "scored": ["a1"], "per_example": {"a1": {"exec": 1}}}]
    rows = adapt_curve.repeat_rows(results, base)
    assert rows == [{"k": 10, "seeds": 2, "databases": 2, "scored": 5, "repeats": 1, "net_repeats": 1.0,
                     "net_others": 0.5}]
    table = adapt_curve.markdown([], {}, "settings", rows)
    assert "| 10 | 2 | 2 | 5 | 1 | +1.0 | +0.5 |" in table.splitlines()
