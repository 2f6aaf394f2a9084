"""The quickstart end to end, shortened: a few steps on a few generated databases."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_quickstart_end_to_end_shortened(tmp_path, monkeypatch):
    from vantage_core.cli.quickstart import run_quickstart

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    lines = []
    small = "{name: synthetic, n_databases: 6, examples_per_db: 6}"
    figures = run_quickstart(tmp_path / "qs", overrides=[
        "train.steps=4", "train.eval_every=0", "train.eval_examples=3", "train.batch_size=4",
        "model.d_model=32", "model.n_layers=1", "model.expert_hidden=32",
        f"data.train=[{small}]", f"data.validation=[{small}]", f"data.test=[{small}]"],
        progress=False, echo=lines.append)
    out = tmp_path / "qs"
    report = (out / "report.md").read_text()
    assert "## Test on unseen synthetic databases" in report and "### Generated queries" in report
    assert "![loss](plots/loss.png)" in report and (out / "plots" / "loss.png").exists()
    assert 0.0 <= figures["test"]["execution"] <= 1.0
    assert figures["test_examples"] == 6 and len(figures["test_databases"]) == 1
    assert json.loads((out / "quickstart.json").read_text())["test"] == figures["test"]
    text = "\n".join(lines)
    assert "A few questions on unseen databases:" in text and "execution accuracy on 6 questions" in text
    # the queries shown (on the console and in the report) are the model's, formatted for people
    from vantage_core.sql.format import formatted_sql

    predicted = {formatted_sql(json.loads(line)["prediction"])
                 for line in (out / "test" / "predictions.jsonl").read_text().splitlines()}
    shown = [line.split("SQL:  ", 1)[1] for line in lines if line.startswith("    SQL:  ")]
    generated = [line.split("generated: `", 1)[1][:-1] for line in report.splitlines() if "- generated: `" in line]
    assert shown and shown == generated and set(shown) <= predicted
