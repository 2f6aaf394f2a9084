"""`vantage tokenizer train`, `vantage data prepare|stats` on a tiny synthetic config."""

from __future__ import annotations

import json

from click.testing import CliRunner

from vantage_core.cli import cli


def test_tokenizer_train_then_prepare_then_stats(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    src = f"{{name: synthetic, n_databases: 5, examples_per_db: 12, seed: 1, out_dir: {tmp_path / 'dbs'}}}"
    cfg.write_text(f"run: {{name: t, dir: {tmp_path / 'run'}}}\n"
                   f"data:\n  train: [{src}]\n  validation: [{src}]\n  cache_dir: {tmp_path / 'cache'}\n"
                   f"  tokenizer: {{name: sentencepiece, vocab_size: 500}}\n")
    runner = CliRunner()
    r = runner.invoke(cli, ["tokenizer", "train", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.model").is_file() and "saved to" in r.output
    r = runner.invoke(cli, ["data", "prepare", "-c", str(cfg)])
    assert r.exit_code == 0, r.output
    assert "train: 36 examples ready; written" in r.output and "validation: 12 examples ready" in r.output
    r = runner.invoke(cli, ["data", "prepare", "-c", str(cfg)])
    assert "read from cache" in r.output
    r = runner.invoke(cli, ["data", "stats", "-c", str(cfg), "--json", "--plot", str(tmp_path / "len.png")])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert stats["train"]["examples"] == 36 and stats["train"]["databases"] == 3
    assert 0 < stats["train"]["n_sql"]["median"] <= stats["train"]["n_sql"]["p95"] <= stats["train"]["n_sql"]["max"]
    assert (tmp_path / "len.png").stat().st_size > 1000


def test_unknown_dataset_parameter_is_named(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("data:\n  train: [{name: synthetic, n_dbs: 3}]\n")
    r = CliRunner().invoke(cli, ["data", "prepare", "-c", str(cfg)])
    assert r.exit_code != 0 and "n_dbs" in str(r.exception) and "n_databases" in str(r.exception)
