"""Commands that write folders never lose what was there: `vantage export` refuses an output that
is, contains or lies inside its source, replaces an earlier export only once the new one is
complete, and names an output it cannot write in one line; a `vantage train` whose start fails
leaves the run folder as it found it; `tokenizer train`, `evaluate` and `plot` neither replace
what they should keep nor answer an unwritable --out with a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from test_cli_errors import run_cli

from vantage_core.errors import VantageError

TINY = Path(__file__).parent / "fixtures" / "train_tiny.yaml"


def one_error_line(err: str) -> str:
    """The single ``error: ...`` line of ``err`` (which holds no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), hidden ones included."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from infer_fixture import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model") / "best")


@pytest.fixture()
def run_folder(tiny_model, tmp_path_factory):
    """A run folder of this test's own, holding a tiny model at checkpoints/best and a note of the user's."""
    run = tmp_path_factory.mktemp("export") / "run"
    shutil.copytree(tiny_model, run / "checkpoints" / "best")
    (run / "notes.txt").write_text("mine")
    return run


@pytest.mark.parametrize("source, out, relation", [
    ("checkpoints/best", ".", "contains"),
    ("checkpoints/best", "checkpoints/best", "is"),
    (".", "checkpoints/export", "lies inside"),
], ids=["out-is-the-run", "out-is-the-source", "out-inside-the-source"])
def test_export_refuses_an_output_that_overlaps_its_source(run_folder, capsys, source, out, relation):
    before = snapshot(run_folder)
    src, dst = run_folder / source, run_folder / out
    code, _, err = run_cli(["export", "-m", str(src), "-o", str(dst), "--overwrite"], capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"--out {dst} {relation} the folder it reads, {src}" in line
    assert snapshot(run_folder) == before
    assert sorted(p.name for p in run_folder.parent.iterdir()) == ["run"]  # no temporary left beside it


def test_export_of_something_that_is_not_a_model_leaves_the_existing_export(run_folder, tmp_path, capsys):
    out = tmp_path / "export"
    assert run_cli(["export", "-m", str(run_folder / "checkpoints" / "best"), "-o", str(out)], capsys)[0] == 0
    before = snapshot(out)
    (tmp_path / "not_a_model").mkdir()
    code, _, err = run_cli(["export", "-m", str(tmp_path / "not_a_model"), "-o", str(out), "--overwrite"], capsys)
    assert code == 2 and "not_a_model" in one_error_line(err)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "not_a_model"]


def test_export_overwrite_replaces_an_earlier_export_and_leaves_no_temporary(run_folder, tmp_path, capsys):
    out = tmp_path / "export"
    src = str(run_folder / "checkpoints" / "best")
    assert run_cli(["export", "-m", src, "-o", str(out)], capsys)[0] == 0
    (out / "stale.txt").write_text("from an earlier export")
    assert run_cli(["export", "-m", src, "-o", str(out), "--overwrite", "--decoding", "beam"], capsys)[0] == 0
    assert not (out / "stale.txt").exists() and '"decoding": "beam"' in (out / "config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_export_overwrite_refuses_a_folder_that_is_not_an_export(run_folder, tmp_path, capsys):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    code, _, err = run_cli(["export", "-m", str(run_folder / "checkpoints" / "best"), "-o", str(out),
                            "--overwrite"], capsys)
    assert code == 2 and "holds files that are not a model export" in one_error_line(err)
    assert (out / "thesis.tex").read_text() == "years of work"


def _unwritable_outputs(tmp_path: Path) -> dict[str, Path]:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {"under-a-file": a_file / "out", "under-proc": Path("/proc/vantage_export_test"),
            "under-sys": Path("/sys/vantage_export_test")}


@pytest.mark.parametrize("where", ["under-a-file", "under-proc", "under-sys"])
def test_export_to_a_place_it_cannot_write_is_one_error_line(run_folder, tmp_path, capsys, where):
    """A folder under a regular file, under /proc (no such folder can be made) and under /sys
    (refused even to root) stand for every output the process cannot create."""
    out = _unwritable_outputs(tmp_path)[where]
    if where != "under-a-file" and not out.parent.is_dir():
        pytest.skip(f"{out.parent} is not mounted here")
    code, _, err = run_cli(["export", "-m", str(run_folder / "checkpoints" / "best"), "-o", str(out)], capsys)
    assert code == 2
    assert str(out) in one_error_line(err)
    assert not out.exists()


def test_a_folder_written_by_a_block_that_fails_is_never_swapped_in(tmp_path):
    from vantage_core.folders import new_folder

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="half way"):
        with new_folder(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("half way")
    assert snapshot(out) == {"old.txt": b"old"}
    with new_folder(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert snapshot(out) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------- vantage train

@pytest.fixture()
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _tiny(run_dir: Path, *sets: str):
    from vantage_core.config import load_config

    return load_config(TINY, [f"run.dir={run_dir}", "train.steps=1", "train.eval_every=0", "train.compile=false",
                              "data.validation=[]", "data.test=[]", *sets])


MISSING_DATA = "data.train=[{name: spider, path: /nonexistent/spider}]"


def test_a_failed_start_leaves_no_run_folder_and_the_rerun_trains(tmp_path, _cache):
    from vantage_core.train.run import train

    run = tmp_path / "run"
    with pytest.raises(VantageError, match="/nonexistent/spider"):
        train(_tiny(run, MISSING_DATA), progress=False, echo=lambda m: None)
    assert not run.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging folder left either
    summary = train(_tiny(run), progress=False, echo=lambda m: None)  # the fixed config: no "already exists"
    assert summary["steps"] == 1 and (run / "config.yaml").is_file() and (run / "checkpoints" / "last").is_dir()


def test_a_failed_start_with_overwrite_keeps_the_earlier_run(tmp_path, _cache):
    from vantage_core.train.run import train

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("run: {name: earlier}\n")
    (run / "plugins.json").write_text("[]\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "kind": "train", "loss": 2.0}\n')
    before = snapshot(run)
    with pytest.raises(VantageError, match="/nonexistent/spider"):
        train(_tiny(run, MISSING_DATA), overwrite=True, progress=False, echo=lambda m: None)
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path):
    """A project folder with a config.yaml of its own is not a run (a run also has plugins.json)."""
    from vantage_core.train.run import train

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "config.yaml").write_text("theme: dark\n")
    with pytest.raises(VantageError, match="holds files that are not a training run"):
        train(_tiny(folder), overwrite=True, progress=False, echo=lambda m: None)
    assert snapshot(folder) == {"config.yaml": b"theme: dark\n", "thesis.tex": b"years of work"}


@pytest.mark.parametrize("entries, replaceable", [
    (["config.yaml", "plugins.json", "notes.txt"], True),  # an earlier run, the user's notes included
    (["tokenizer/"], True),  # what `vantage tokenizer train` or `vantage data prepare` saved for the run
    (["config.yaml"], False),
    (["tokenizer/", "thesis.tex"], False),
], ids=["earlier-run", "tokenizer-only", "config-only", "tokenizer-and-other-files"])
def test_what_train_overwrite_may_replace(tmp_path, entries, replaceable):
    from vantage_core.train.run import is_run_dir

    for entry in entries:
        if entry.endswith("/"):
            (tmp_path / entry).mkdir()
        else:
            (tmp_path / entry).write_text("x")
    assert is_run_dir(tmp_path) is replaceable


def test_tokenizer_train_replaces_a_tokenizer_only_with_overwrite(tmp_path, capsys):
    config = tmp_path / "tok.yaml"
    config.write_text(f"run: {{dir: {tmp_path / 'run'}}}\ndata:\n  train: [{{name: synthetic, n_databases: 3, "
                      f"examples_per_db: 5, out_dir: {tmp_path / 'dbs'}}}]\n"
                      f"  tokenizer: {{name: sentencepiece, vocab_size: 200}}\n")
    out = tmp_path / "run" / "tokenizer"
    out.mkdir(parents=True)
    (out / "tokenizer.json").write_text("{}")  # stands for the tokenizer an earlier run trained
    code, _, err = run_cli(["tokenizer", "train", "-c", str(config)], capsys)
    assert code == 2 and f"--out {out} already exists; pass --overwrite" in one_error_line(err)
    assert snapshot(out) == {"tokenizer.json": b"{}"}
    assert run_cli(["tokenizer", "train", "-c", str(config), "--overwrite"], capsys)[0] == 0
    assert (out / "tokenizer.model").is_file() and sorted(p.name for p in out.parent.iterdir()) == ["tokenizer"]


# ---------------------------------------------------------------------------- other commands

def test_evaluate_refuses_an_out_that_would_overwrite_the_predictions(tmp_path, capsys):
    from fixtures.releases import write_spider

    root = write_spider(tmp_path / "spider", n_dbs=2, per_db=1)
    out = tmp_path / "eval"
    out.mkdir()
    predictions = out / "pred.sql"
    predictions.write_text("SELECT   count(*)   FROM orders   -- spaced as its author wrote it\n")
    before = predictions.read_bytes()
    code, _, err = run_cli(["evaluate", "-p", str(predictions), "-d", "spider", "--split", "dev",
                            "--dataset-param", f"path={root}", "--metric", "execution", "--out", str(out)], capsys)
    assert code == 2
    assert f"--out {out}: the results would overwrite the predictions being scored, {predictions}" in \
        one_error_line(err.split("\n", 1)[1])  # (the first line is the dataset's load summary)
    assert predictions.read_bytes() == before


def test_an_out_folder_under_a_file_is_one_error_line(tmp_path, capsys):
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"kind": "train", "step": s, "loss": 1 / s}) + "\n"
                                               for s in range(1, 4)))
    (tmp_path / "a_file").write_text("x")
    code, _, err = run_cli(["plot", str(run), "--out", str(tmp_path / "a_file" / "plots")], capsys)
    assert code == 2
    assert f"{tmp_path / 'a_file' / 'plots'}: Not a directory" in one_error_line(err)
