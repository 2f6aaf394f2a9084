"""Hostile files and values: one ``error: ...`` line naming the file,
line or field, never a traceback; values that cannot work are refused by ``config validate``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.releases import write_spider
from vantage_core.cli import main
from vantage_core.errors import VantageError

BAD_BYTES = b"\xff\xfe"


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


# ---------------------------------------------------------------------------- config values

@pytest.mark.parametrize("yaml_text, line, field", [
    ("train:\n  batch_size: -4\n", 2, "train.batch_size"),
    ("train:\n  lr: .nan\n", 2, "train.lr"),
    ("train:\n  log_every: 0\n", 2, "train.log_every"),
    ("model:\n  num_experts: 4\n  router: {name: topk, k: -3}\n", 3, "model.router"),
    ("model:\n  num_experts: 4\n  router: {name: topk, k: 9}\n", 3, "model.router"),
    ("model:\n  d_model: 0\n", 2, "model.d_model"),
    ("inference:\n  top_p: 1.5\n", 2, "inference.top_p"),
    ("evaluate:\n  timeout_s: .inf\n", 2, "evaluate.timeout_s"),
    ("model:\n  vocab_size: -5\n", 2, "model.vocab_size"),
    ("model:\n  d_model: 130\n  n_heads: 4\n", 3, "model.n_heads: 4 must divide d_model (130)"),
    ("model:\n  n_heads: 4\n  n_kv_heads: 3\n", 3, "model.n_kv_heads: 3 must divide n_heads (4)"),
    ("model:\n  head_dim: -8\n", 2, "model.head_dim"),
    ("model:\n  moe_every: -1\n", 2, "model.moe_every"),
    ("model:\n  dtype: int8\n", 2, "model.dtype"),
    ("data:\n  tokenizer: {name: sentencepiece, vocab_size: -5}\n", 2, "data.tokenizer.vocab_size"),
    ("data:\n  serialization: {max_sql_tokens: 0}\n", 2, "data.serialization.max_sql_tokens"),
    ("data:\n  train: [{name: synthetic, limit: -3}]\n", 2, "data.train.0.limit"),
    ("model:\n  heads: [vocab, pointer]\n  cross_attention_every: 0\n  schema_encoder: {name: linked}\n"
     "data:\n  target: actions\n  linker: {name: lexical}\n  tokenizer: {name: sql_actions}\n"
     "train:\n  select_metric: action_exact\n", 2, "model.heads"),
], ids=["batch_size-negative", "lr-nan", "log_every-zero", "k-negative", "k-over-experts", "d_model-zero",
        "top_p-over-1", "timeout-infinite", "vocab_size-negative", "n_heads-not-dividing-d_model",
        "n_kv_heads-not-dividing-n_heads", "head_dim-negative", "moe_every-negative", "dtype-unknown",
        "tokenizer-vocab_size-negative", "max_sql_tokens-zero", "limit-negative", "pointer-without-cross-attention"])
def test_config_validate_refuses_values_that_cannot_work(tmp_path, capsys, yaml_text, line, field):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text)
    code, out, err = run_cli(["config", "validate", "--config", str(path)], capsys)
    assert code == 2 and "valid" not in out
    assert_one_error_line(err, f"{path}:{line}: {field}")


def test_router_k_within_the_experts_is_valid():
    from vantage_core.config import load_config

    cfg = load_config(None, base={"model": {"num_experts": 4, "router": {"name": "topk", "k": 4}}}, registry=False)
    assert cfg.model.router.params["k"] == 4


# ---------------------------------------------------------------------------- YAML files

@pytest.mark.parametrize("content, fragment", [
    (b"train: &a [*a]\n", "anchor refers to itself"),
    (b"model: &m {sub: *m}\n", "anchor refers to itself"),
    (b"train:\n  steps: 3\n  # caf" + BAD_BYTES + b"\n", ":3:"),
    (b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    (b"train:\n  steps: " + b"9" * 5000 + b"\n", ":2: train.steps: 99999999999999999999... (5000 characters)"),
    (b"base: &b {steps: 3}\ntrain:\n  <<: *b\n", ":3: train.<<: YAML merge keys are not read"),
    (b"train:\n  steps: !!python/name:os.system\n", ":2: train.steps: the YAML tag !!python/name:os.system"),
    (b"!!python/object/apply:os.system [echo hi]\n", ":1: (top level): the YAML tag !!python/object/apply"),
], ids=["self-list", "self-map", "not-utf8", "deep", "5000-digit-integer", "merge-key", "python-name-tag",
        "python-apply-tag"])
def test_hostile_yaml_is_one_error_line(tmp_path, capsys, content, fragment):
    path = tmp_path / "hostile.yaml"
    path.write_bytes(content)
    code, _, err = run_cli(["config", "validate", "--config", str(path)], capsys)
    assert code == 2
    assert_one_error_line(err, str(path), fragment)


def test_a_5000_digit_override_is_one_error_line(capsys):
    code, _, err = run_cli(["config", "validate", "--set", "train.steps=" + "9" * 5000], capsys)
    assert code == 2
    assert_one_error_line(err, "--set train.steps=...: the value is not valid YAML")
    assert len(err) < 300  # the value is not echoed back


@pytest.mark.parametrize("yaml_text, field", [
    ("model:\n  vocab_size: -5\n", "model.vocab_size"),
    ("model:\n  d_model: 130\n  n_heads: 4\n", "model.n_heads"),
], ids=["vocab_size-negative", "n_heads-not-dividing-d_model"])
def test_params_refuses_what_config_validate_refuses(tmp_path, capsys, yaml_text, field):
    path = tmp_path / "model.yaml"
    path.write_text(yaml_text)
    code, _, err = run_cli(["params", str(path)], capsys)
    assert code == 2
    assert_one_error_line(err, f"{path}:", field)


@pytest.mark.parametrize("command, option, value", [
    ("serve", "--timeout", "nan"), ("serve", "--timeout", "-5"), ("serve", "--timeout", "0"),
    ("serve", "--timeout", "inf"), ("generate", "--top-p", "nan"), ("generate", "--temperature", "inf"),
], ids=["timeout-nan", "timeout-negative", "timeout-zero", "timeout-infinite", "top_p-nan", "temperature-infinite"])
def test_a_number_option_that_cannot_work_is_refused_at_parse_time(tmp_path, capsys, command, option, value):
    """Refused before a model is loaded or a server started: one ``Error:`` line naming the option."""
    args = [command, "-m", str(tmp_path), option, value]
    if command == "generate":
        args += ["--db", str(tmp_path / "none.sqlite"), "how many?"]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"'{option}'" in errors[0] and value in errors[0], err


def test_a_yaml_alias_used_twice_is_fine(tmp_path):
    from vantage_core.config import load_config

    path = tmp_path / "ok.yaml"
    path.write_text("x: &r {name: topk, k: 1}\nmodel:\n  router: *r\n")
    with pytest.raises(VantageError, match="x"):  # the unknown section, not the alias, is wrong
        load_config(path, registry=False)


# ---------------------------------------------------------------------------- predictions and data

@pytest.fixture()
def spider(tmp_path):
    """A Spider release whose dev.json has 4 rows: 2 usable, 1 with ``question: 123``, 1 on a
    missing database."""
    root = write_spider(tmp_path / "spider", n_dbs=2, per_db=1)
    good = {"db_id": "dev_shop", "question": "Total amount of orders?", "query": "SELECT sum(amount) FROM orders"}
    rows = [good, {**good, "question": 123}, {**good, "db_id": "gone_db"},
            {**good, "question": "How many orders?", "query": "SELECT count(*) FROM orders"}]
    (root / "dev.json").write_text(json.dumps(rows))
    return root


def _evaluate(spider, predictions, tmp_path, capsys, *extra):
    return run_cli(["evaluate", "--predictions", str(predictions), "--dataset", "spider", "--split", "dev",
                    "--dataset-param", f"path={spider}", "--metric", "execution", "--out", str(tmp_path / "out"),
                    *extra], capsys)


def test_a_row_with_a_number_for_question_is_skipped_with_its_reason(spider):
    from vantage_core.plugins import registry

    report = registry().build("dataset", "spider", path=str(spider)).load("dev")
    assert len(report.examples) == 2 and report.source_rows == [0, 3]
    assert report.skipped["malformed row"] == 1
    assert any("item 1" in d and "question is int, not text" in d for d in report.details)


def test_predictions_one_per_row_are_aligned_by_row(spider, tmp_path, capsys):
    """Failure 9: one prediction per dev.json row was refused ("4 predictions for 2 examples")."""
    predictions = tmp_path / "pred.sql"
    predictions.write_text("SELECT 1\nSELECT 2\nSELECT 3\nSELECT count(*) FROM orders\n")
    code, out, err = _evaluate(spider, predictions, tmp_path, capsys)
    assert code == 0, err
    assert "rows 1, 2 (0-based) are not scored" in err
    assert "execution: 50.00 (n=2)" in out  # row 0 is wrong (SELECT 1), row 3 is right
    code, _, err = _evaluate(spider, predictions, tmp_path, capsys, "--align", "order")
    assert code == 2
    assert_one_error_line(err, "4 predictions for 2 examples", "--align row")


def test_predictions_file_that_is_not_utf8(spider, tmp_path, capsys):
    predictions = tmp_path / "pred.sql"
    predictions.write_bytes(b"SELECT 1\nSELECT '" + BAD_BYTES + b"'\n")
    code, _, err = _evaluate(spider, predictions, tmp_path, capsys)
    assert code == 2
    assert_one_error_line(err, f"{predictions}:2:9: not valid UTF-8")


def test_dev_json_that_is_not_utf8(spider, tmp_path, capsys):
    (spider / "dev.json").write_bytes(b'[{"db_id": "dev_shop",\n "question": "caf' + BAD_BYTES + b'", "query": "x"}]')
    predictions = tmp_path / "pred.sql"
    predictions.write_text("SELECT 1\n")
    code, _, err = _evaluate(spider, predictions, tmp_path, capsys)
    assert code == 2
    assert_one_error_line(err, f"{spider / 'dev.json'}:2:", "not valid UTF-8")


def test_a_form_feed_inside_a_line_stays_in_its_prediction(tmp_path):
    """Failure 9: str.splitlines split one prediction in two at a form feed."""
    from vantage_core.cli.evaluate import read_predictions

    path = tmp_path / "pred.sql"
    path.write_bytes(b"SELECT 1\x0c FROM t\r\nSELECT 2\x0b\nSELECT '\xe2\x80\xa8'\n")
    assert read_predictions(path) == ["SELECT 1\x0c FROM t", "SELECT 2\x0b", "SELECT '\u2028'"]


# ---------------------------------------------------------------------------- generate

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from infer_fixture import make_db, make_model_dir

    root = tmp_path_factory.mktemp("generate")
    make_db(root / "concerts.sqlite")
    return make_model_dir(root / "model")


def test_questions_file_that_is_not_utf8(model_dir, tmp_path, capsys):
    questions = tmp_path / "questions.txt"
    questions.write_bytes(b"how many singers?\nwho sang " + BAD_BYTES + b"?\n")
    code, _, err = run_cli(["generate", "-m", str(model_dir), "--db", str(model_dir.parent / "concerts.sqlite"),
                            "--questions", str(questions)], capsys)
    assert code == 2
    assert_one_error_line(err, f"{questions}:2:10: not valid UTF-8")


def test_generate_run_exits_1_when_the_sql_fails(model_dir, tmp_path, capsys):
    """Failure 9: `vantage generate --run` exited 0 when the SQL failed to run."""
    import sqlite3

    empty = tmp_path / "empty.sqlite"
    conn = sqlite3.connect(empty)
    conn.execute("CREATE TABLE vacant (x INTEGER)")
    conn.commit()
    conn.close()
    # the untrained model writes pieces of its corpus (singer, concert): nothing here has them
    code, out, err = run_cli(["generate", "-m", str(model_dir), "--db", str(empty), "--run", "--max-new-tokens", "8",
                              "--constraint", "none", "how many singers?"], capsys)
    assert code == 1 and "error: the SQL did not run" in err, (out, err)


# ---------------------------------------------------------------------------- checkpoints, metrics

def _tiny_checkpoint(path):
    import mlx.nn as nn
    import mlx.optimizers as optim

    from vantage_core.model.io import save_checkpoint

    model, optimizer = nn.Linear(8, 4), optim.AdamW(1e-3)
    optimizer.init(model.trainable_parameters())
    save_checkpoint(path, model=model, optimizer=optimizer, trainer_state={"step": 3})
    return model, optimizer


def test_a_truncated_model_file_is_a_clear_error_on_resume(tmp_path):
    from vantage_core.model.io import restore_checkpoint

    ckpt = tmp_path / "run" / "checkpoints" / "last"
    model, optimizer = _tiny_checkpoint(ckpt)
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:60])
    with pytest.raises(VantageError, match=r"model\.safetensors: cannot be read, truncated or corrupt"):
        restore_checkpoint(ckpt, model=model, optimizer=optimizer)


def test_a_killed_saves_temporary_folder_is_cleaned(tmp_path):
    """Failure 9: a .tmp-<pid> folder left by a killed save was never removed."""
    ckpt = tmp_path / "checkpoints" / "last"
    ckpt.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    stale = ckpt.parent / f".last.tmp-{dead.pid}"
    (stale / "tokenizer").mkdir(parents=True)
    live = ckpt.parent / f".last.tmp-{os.getppid()}"  # a save in progress elsewhere stays
    live.mkdir()
    _tiny_checkpoint(ckpt)
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == sorted(["last", live.name])


def test_plot_skips_a_metrics_line_that_is_not_utf8(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    records = [json.dumps({"kind": "train", "step": s, "loss": 2.0 / s, "ce": 1.5 / s}).encode() for s in range(1, 6)]
    records.insert(2, b'{"kind": "train", "note": "' + BAD_BYTES + b'"}')
    (run / "metrics.jsonl").write_bytes(b"\n".join(records) + b"\n")
    code, out, err = run_cli(["plot", str(run)], capsys)
    assert code == 0 and "Traceback" not in err
    assert "line 3 not valid UTF-8, skipped" in err
    assert (run / "plots" / "loss.png").is_file()


def test_validate_names_the_sweep_and_run_whose_value_is_wrong(tmp_path, capsys):
    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {tiny}\nruns:\n  - {{name: a, model.num_experts: 4}}\n"
                     "  - {name: b, model.num_experts: -3}\n")
    code, _, err = run_cli(["config", "validate", "--config", str(sweep)], capsys)
    assert code != 0
    assert_one_error_line(err, "sweep.yaml: run 'b'", "model.num_experts")
    code, out, _ = run_cli(["config", "validate", "--config", str(sweep), "--set", "model.num_experts=8"], capsys)
    assert code == 0 and "valid sweep (2 runs" in out, out
