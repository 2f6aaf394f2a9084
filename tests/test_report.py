"""``vantage report`` on runs made here with the real commands (two tiny trainings, predictions
scored by ``vantage evaluate``, an ensemble decoded by both models): the page's figures are the
runs' metrics, its mean ± std and paired differences are computed from them, its error rows count
the wrong answers this test planted, and a missing or unevaluated run is one error line."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from vantage_core.cli import main

TINY = Path(__file__).parent / "fixtures" / "train_tiny.yaml"
DATA = ["--dataset", "synthetic", "--split", "validation", "--dataset-param", "n_databases=6",
        "--dataset-param", "examples_per_db=8", "-m", "execution", "-m", "exact_match"]
# Wrong predictions planted in the validation split's gold queries (index -> prediction); every
# other prediction is the gold query itself.
WRONG = {
    "sys_seed0": {1: "SELECT player_name FROM players",  # gold joins two tables and selects two items
                  2: "SELECT position FROM players"},  # gold groups by position
    "sys_seed1": {1: "SELECT player_name FROM players",
                  4: "SELECT position FROM players GROUP BY position",  # gold also counts
                  5: "SELECT team_name FROM teams ORDER BY founded DESC LIMIT 1"},  # gold: the lowest
    "base_seed1": {1: "SELECT player_name FROM players", 2: "SELECT position FROM players",
                   4: "SELECT position FROM players GROUP BY position"},
}


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def gold_queries() -> list[str]:
    from vantage_core.plugins import registry

    return [e.sql for e in registry().build("dataset", "synthetic", n_databases=6, examples_per_db=8)
            .load("validation").examples]


def score(predictions: dict[int, str], out: Path) -> None:
    """``vantage evaluate`` of the gold queries with ``predictions`` in their place, into ``out``."""
    file = out.parent / f"{out.parent.name}-{out.name}.sql"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("".join(predictions.get(i, sql) + "\n" for i, sql in enumerate(gold_queries())))
    main(["evaluate", "--predictions", str(file), *DATA, "--out", str(out)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two trained and scored seeds of ``sys``, one scored seed of ``base`` (predictions only) and
    the ensemble of the two ``sys`` models, decoded."""
    root = tmp_path_factory.mktemp("report") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(root.parent / "cache"))
        for seed in (0, 1):
            main(["train", "--config", str(TINY), "--set", f"run.dir={root / f'sys_seed{seed}'}",
                  "--set", f"run.seed={seed}", "--set", "train.steps=3", "--set", "train.eval_every=0",
                  "--set", "data.validation=[]", "--no-progress"])
        for name, wrong in WRONG.items():
            score(wrong, root / name / "eval")
        score({}, root / "sys_seed0" / "eval_again")  # a further evaluation of one run: all right
        main(["evaluate", "--checkpoint", str(root / "sys_seed0"), "--checkpoint", str(root / "sys_seed1"),
              *DATA, "--out", str(root / "pair" / "eval")])
    return root


@pytest.fixture(scope="module")
def page(runs, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("page") / "report"
    main(["report", *(str(runs / n) for n in ("sys_seed0", "sys_seed1", "base_seed1", "pair")), "-o", str(out)])
    return out, (out / "report.md").read_text()


def table(text: str, first_header: str) -> list[dict[str, str]]:
    """The rows of the Markdown table whose header starts with ``first_header``, as {column: cell}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    columns = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))))
    return rows


def table_rows(text: str, first_header: str) -> dict[str, dict[str, str]]:
    """The same table by its first cell."""
    return {row[first_header]: row for row in table(text, first_header)}


def percent(runs: Path, name: str, metric: str, hardness: str | None = None) -> float:
    section = json.loads((runs / name / "eval" / "summary.json").read_text())[metric]
    return 100 * (section["by_hardness"][hardness] if hardness else section)[metric]


def test_the_planted_wrong_answers_are_what_execution_scored_wrong(runs):
    """The fixture's premise: exactly the planted predictions are wrong by execution."""
    for name, wrong in WRONG.items():
        rows = [json.loads(line) for line in (runs / name / "eval" / "results.jsonl").read_text().splitlines()]
        assert {r["index"] for r in rows if not r["scores"]["execution"]["exec"]} == set(wrong), name


def test_each_run_row_gives_its_metrics_steps_and_minutes(runs, page):
    """Every run's EX, EM and EX by hardness on the page are its eval/summary.json's; steps and
    minutes its training summary's."""
    rows = table_rows(page[1], "run")
    for name in ("sys_seed0", "sys_seed1", "base_seed1"):
        row = rows[name]
        assert row["EX"] == f"{percent(runs, name, 'execution'):.1f}"
        assert row["EM"] == f"{percent(runs, name, 'exact_match'):.1f}"
        for level in ("easy", "medium", "hard", "extra"):
            section = json.loads((runs / name / "eval" / "summary.json").read_text())["execution"]["by_hardness"]
            expected = f"{100 * section[level]['execution']:.1f}" if level in section else "n/a"
            assert row[f"EX {level}"] == expected, (name, level)
        assert row["questions"] == "8"
    for seed in (0, 1):
        training = json.loads((runs / f"sys_seed{seed}" / "summary.json").read_text())
        assert rows[f"sys_seed{seed}"]["steps"] == "3" == str(training["steps"])
        assert rows[f"sys_seed{seed}"]["run minutes"] == f"{training['wall_s'] / 60:.1f}"
        assert rows[f"sys_seed{seed}"]["seed"] == str(seed)
    assert rows["base_seed1"]["steps"] == "-"  # scored predictions: no training, no decoding
    assert rows["base_seed1"]["fallback answers"] == "" and rows["sys_seed0"]["fallback answers"] == ""
    assert "pair" not in rows  # the ensemble has its own table


def test_a_system_of_several_seeds_gets_its_mean_and_sample_std(runs, page):
    """A system's mean ± std row is the mean and sample standard deviation of its seeds' EX and EM."""
    rows = table_rows(page[1], "run")
    mean_row = rows["**sys: mean ± std (2 runs)**"]
    for metric, label in (("execution", "EX"), ("exact_match", "EM")):
        values = [percent(runs, f"sys_seed{s}", metric) for s in (0, 1)]
        assert mean_row[label] == f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"
    assert mean_row["EX"] == "68.8 ± 8.8"  # 6/8 and 5/8 right
    assert not any(name.startswith("**base") for name in rows)  # one run: no spread


def test_another_system_is_paired_seed_by_seed_with_the_first(runs, page):
    """Another system's run sits beside the first system's run of the same seed, and the difference row is other - first."""
    rows = table_rows(page[1], "seed")
    assert set(rows) == {"1", "**base - sys** (1 paired)"}
    ex_sys, ex_base = percent(runs, "sys_seed1", "execution"), percent(runs, "base_seed1", "execution")
    assert rows["1"]["EX sys"] == f"{ex_sys:.1f}" and rows["1"]["EX base"] == f"{ex_base:.1f}"
    assert rows["**base - sys** (1 paired)"]["EX sys"] == f"**{ex_base - ex_sys:+.1f}**" == "**+0.0**"


def test_an_ensemble_stands_beside_its_members_mean(runs, page):
    """The ensemble's row: its own EX, its members (read from decoding.json), their mean EX and the gain; how its answers were chosen."""
    rows = table_rows(page[1], "ensemble")
    pair = rows["pair"]
    assert pair["members"] == "sys_seed0, sys_seed1" and pair["members' steps"] == "3 / 3"
    assert pair["questions"] == "8"
    own = percent(runs, "pair", "execution")
    alone = statistics.mean(percent(runs, f"sys_seed{s}", "execution") for s in (0, 1))
    assert pair["EX"] == f"{own:.1f}" and pair["members' mean EX"] == f"{alone:.1f}"
    assert pair["gain EX"] == f"{own - alone:+.1f}"
    decoding = json.loads((runs / "pair" / "eval" / "decoding.json").read_text())
    assert pair["decoding s"] == f"{decoding['seconds']:.0f}"
    chosen = table_rows(page[1], "decoded run")
    assert set(chosen) == {"pair"} and {k: int(v) for k, v in chosen["pair"].items() if k != "decoded run"} == \
        decoding["choices"]


def test_further_evaluations_of_a_run_get_their_own_rows(runs, page):
    """RUN/eval_NAME gets a row with its own figures and the decoding settings it changed (none here)."""
    further = table(page[1], "run | evaluation")
    assert [(r["run"], r["evaluation"]) for r in further] == [("sys_seed0", "again")]
    summary = json.loads((runs / "sys_seed0" / "eval_again" / "summary.json").read_text())
    assert further[0]["EX"] == f"{100 * summary['execution']['execution']:.1f}" == "100.0"
    assert further[0]["differs from eval/ by"] == "the same decoding"


def test_the_error_rows_count_the_planted_mistakes(page):
    """The error table counts, per run, the wrong answers and the shapes of the mistakes planted."""
    rows = table_rows(page[1], "wrong answers")
    expected = {  # sys_seed0, sys_seed1, base_seed1 (the untrained ensemble's answers are not planted)
        "wrong in all": (2, 3, 3),
        "gold joins, prediction does not": (1, 1, 1),
        "other number of SELECT items": (1, 2, 2),
        "fewer SELECT items": (1, 2, 2),
        "GROUP BY differs": (1, 0, 1),
        "gold string value not in the question": (0, 0, 0),
        "unparsed": (0, 0, 0),
    }
    for kind, counts in expected.items():
        assert tuple(int(rows[kind][n]) for n in ("sys_seed0", "sys_seed1", "base_seed1")) == counts, kind


def test_the_figures_are_written_beside_the_page(page):
    """The PNG figures the page links are written beside it, and the page names the command that made it."""
    out, text = page
    for name in ("by_hardness.png", "training.png", "systems.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in text
    assert text.splitlines()[2].startswith("Generated by `vantage report ")


def test_a_missing_run_is_one_error_line(runs, tmp_path, capsys):
    """A RUN that does not exist is one error line naming it, and no output folder is made."""
    code, _, err = cli(["report", runs / "sys_seed0", runs / "nope", "-o", tmp_path / "out"], capsys)
    assert code == 2 and err.strip().splitlines() == [
        f"error: {runs / 'nope'}: no such run folder; give a folder that `vantage train` wrote, with its "
        f"evaluation in eval/"]
    assert not (tmp_path / "out").exists()


def test_a_run_without_evaluation_is_one_error_line(tmp_path, capsys):
    """A run with no eval/summary.json is one error line saying how to evaluate it."""
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "summary.json").write_text('{"steps": 3}')
    code, _, err = cli(["report", tmp_path / "trained", "-o", tmp_path / "out"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'trained'}: no evaluation (no eval/summary.json); score the run first")


def test_a_broken_summary_names_its_file_and_line(tmp_path, capsys):
    """An eval/summary.json that is not valid JSON is one error naming the file and line."""
    (tmp_path / "run" / "eval").mkdir(parents=True)
    (tmp_path / "run" / "eval" / "summary.json").write_text('{\n  "execution": \n')
    code, _, err = cli(["report", tmp_path / "run", "-o", tmp_path / "out"], capsys)
    assert code == 2 and err.startswith(f"error: {tmp_path / 'run' / 'eval' / 'summary.json'}:3: not valid JSON")


def test_the_output_folder_may_not_overlap_a_run_nor_replace_other_files(runs, tmp_path, capsys):
    """-o inside a run is refused, and --overwrite does not replace a folder of other files."""
    code, _, err = cli(["report", runs / "sys_seed0", "-o", runs / "sys_seed0" / "report"], capsys)
    assert code == 2 and "lies inside the folder it reads" in err and "Traceback" not in err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    code, _, err = cli(["report", runs / "sys_seed0", "-o", tmp_path / "notes", "--overwrite"], capsys)
    assert code == 2 and "holds files that are not a report" in err
    assert (tmp_path / "notes" / "todo.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_report_whole(runs, tmp_path, capsys):
    """An earlier report is kept without --overwrite and replaced whole with it (no figure of the old one left)."""
    out = tmp_path / "report"
    assert cli(["report", runs / "sys_seed0", runs / "sys_seed1", "-o", out], capsys)[0] == 0
    assert (out / "systems.png").exists() is False and (out / "by_hardness.png").exists()
    code, _, err = cli(["report", runs / "sys_seed0", "-o", out], capsys)
    assert code == 2 and "already exists; pass --overwrite" in err
    code, printed, _ = cli(["report", runs / "sys_seed0", "-o", out, "--overwrite", "--title", "Seed 0"], capsys)
    assert code == 0 and printed.strip() == f"{out / 'report.md'}: 1 run"
    text = (out / "report.md").read_text()
    assert text.startswith("# Seed 0\n") and "sys_seed1" not in text


def test_a_torn_results_file_names_its_line(runs, tmp_path, capsys):
    """A results.jsonl cut short in its last line is one error naming the file and line, and no
    report folder is left behind."""
    import shutil

    run = shutil.copytree(runs / "base_seed1", tmp_path / "base_seed1")
    with open(run / "eval" / "results.jsonl", "a") as f:
        f.write('{"index": 8, "scores": {"exec')
    code, _, err = cli(["report", run, "-o", tmp_path / "out"], capsys)
    assert code == 2 and err.strip() == f"error: {run / 'eval' / 'results.jsonl'}:9: not valid JSON: Unterminated string " \
                                        f"starting at"
    assert not (tmp_path / "out").exists()
