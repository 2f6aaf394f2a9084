"""``vantage train`` end to end on a tiny config: the run directory, resume equivalence through
the real data pipeline, Ctrl-C, NaN handling, refusing to overwrite, plots and the sweep table."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

import vantage_core  # noqa: F401
import mlx.core as mx

from vantage_core.config import load_config
from vantage_core.errors import VantageError
from vantage_core.model.io import TRAINING_WEIGHTS, load_trainer_state
from vantage_core.train.run import train
from vantage_core.train.telemetry import read_metrics
from vantage_core.train.trainer import Trainer, TrainingDiverged

TINY = Path(__file__).parent / "fixtures" / "train_tiny.yaml"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    # one data cache for the whole session: the synthetic databases are generated once
    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


POINTER = Path(__file__).parent / "fixtures" / "train_tiny_pointer.yaml"


def tiny(run_dir, *sets, config=TINY):
    return load_config(config, [f"run.dir={run_dir}", *sets])


def losses(run_dir):
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]


def test_a_run_directory_holds_everything(tmp_path):
    summary = train(tiny(tmp_path / "run"), progress=False, echo=lambda m: None)
    run = tmp_path / "run"
    for name in ("config.yaml", "plugins.json", "data.json", "metrics.jsonl", "summary.json", "report.md",
                 "tokenizer/tokenizer.model", "checkpoints/last/model.safetensors",
                 "checkpoints/best/model.safetensors", "plots/loss.png", "plots/expert_load.png", "plots/eval.png"):
        assert (run / name).exists(), name
    records = read_metrics(run)
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == list(range(1, 7))
    first = train_records[0]
    for key in ("loss", "ce", "balance", "z", "lr", "tokens_per_s", "grad_norm", "expert_load"):
        assert key in first, key
    assert len(first["expert_load"]) == 2 and sum(first["expert_load"][0]) == pytest.approx(1.0, abs=1e-4)
    assert first["balance"] > 0  # the balancing loss is on by default and logged
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and "execution" in evals[0]
    assert load_trainer_state(run / "checkpoints" / "last")["step"] == 6
    assert summary["steps"] == 6 and "execution" in summary["validation"]
    plugins = json.loads((run / "plugins.json").read_text())
    assert {"name": "topk", "kind": "router", "distribution": "vantage", "version": "0.1.0"} in plugins


def test_an_existing_run_is_never_overwritten_silently(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("keep me")
    with pytest.raises(VantageError, match="already exists; pass --resume .* or --overwrite"):
        train(tiny(tmp_path / "run"), progress=False, echo=lambda m: None)
    assert (tmp_path / "run" / "notes.txt").read_text() == "keep me"
    with pytest.raises(VantageError, match="nothing to resume"):
        train(tiny(tmp_path / "run"), resume=True, progress=False, echo=lambda m: None)


def interrupt_after(monkeypatch, step):
    """Deliver a real SIGINT (Ctrl-C) to this process right after optimizer step ``step``."""
    real = Trainer.train_step

    def train_step(self, micro):
        record = real(self, micro)
        if self.step == step:
            os.kill(os.getpid(), signal.SIGINT)
        return record

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize("config", [TINY, POINTER], ids=["tokens", "actions"])
def test_ctrl_c_saves_and_resume_gives_the_same_losses(tmp_path, monkeypatch, config):
    sets = ["train.steps=12", "train.eval_every=0", "train.save_every=0", "data.validation=[]"]
    train(tiny(tmp_path / "straight", *sets, config=config), progress=False, echo=lambda m: None)
    straight = losses(tmp_path / "straight")
    assert len(straight) == 12

    with monkeypatch.context() as m:
        interrupt_after(m, 5)
        result = train(tiny(tmp_path / "split", *sets, config=config), progress=False, echo=lambda m: None)
    assert result["stopped"] == "interrupted" and result["step"] == 5
    assert load_trainer_state(tmp_path / "split" / "checkpoints" / "last")["step"] == 5
    train(tiny(tmp_path / "split", *sets, config=config), resume=True, progress=False, echo=lambda m: None)
    assert losses(tmp_path / "split") == straight  # bitwise


def test_link_dropout_resumes_bitwise_and_changes_training(tmp_path, monkeypatch):
    """data.link_dropout: an interrupted run resumes to the losses of one that ran straight through
    (the hidden matches are drawn from the seed and the batch), and they are not the losses of the
    same run without it (the training batches do lose matches)."""
    sets = ["train.steps=8", "train.eval_every=0", "train.save_every=0", "data.validation=[]"]
    dropout = [*sets, "data.link_dropout=0.5"]
    train(tiny(tmp_path / "straight", *dropout, config=POINTER), progress=False, echo=lambda m: None)
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        train(tiny(tmp_path / "split", *dropout, config=POINTER), progress=False, echo=lambda m: None)
    train(tiny(tmp_path / "split", *dropout, config=POINTER), resume=True, progress=False, echo=lambda m: None)
    assert len(losses(tmp_path / "straight")) == 8
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")  # bitwise
    train(tiny(tmp_path / "plain", *sets, config=POINTER), progress=False, echo=lambda m: None)
    assert losses(tmp_path / "plain") != losses(tmp_path / "straight")


def test_the_minutes_budget_ends_training_early(tmp_path, monkeypatch):
    """train.minutes: the loop stops (saves, evaluates, reports) once the budget is spent; the
    clock is injected, so the test does not depend on this machine's speed."""
    readings = iter(range(0, 10_000, 30))  # each reading 30 s after the last: 2 minutes = 4 steps
    summary = train(tiny(tmp_path / "run", "train.minutes=2", "train.eval_every=0", "data.validation=[]"),
                    progress=False, echo=lambda m: None, clock=lambda: float(next(readings)))
    assert summary["steps"] == 4
    assert load_trainer_state(tmp_path / "run" / "checkpoints" / "last")["step"] == summary["steps"]


def test_resume_refuses_a_different_experiment(tmp_path, monkeypatch):
    sets = ["train.steps=4", "train.eval_every=0", "data.validation=[]"]
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        train(tiny(tmp_path / "run", *sets), progress=False, echo=lambda m: None)
    with pytest.raises(VantageError, match=r"model.d_model: 32 -> 48"):
        train(tiny(tmp_path / "run", *sets, "model.d_model=48"), resume=True, progress=False, echo=lambda m: None)


def test_nan_loss_stops_with_the_last_good_checkpoint(tmp_path, monkeypatch):
    import vantage_core.model as model_pkg

    real_loss, calls = model_pkg.loss, {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        total, metrics = real_loss(model, batch)
        return (total * mx.nan if calls["n"] >= 5 else total), metrics

    monkeypatch.setattr(model_pkg, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 5: the loss is nan.*last good checkpoint is .*last \(step 4\)"):
        train(tiny(tmp_path / "run", "train.eval_every=0", "data.validation=[]", "train.compile=false"),
              progress=False, echo=lambda m: None)
    state = load_trainer_state(tmp_path / "run" / "checkpoints" / "last")
    assert state["step"] == 4
    weights = mx.load(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    assert all(bool(mx.isfinite(v).all()) for v in weights.values())


def test_plot_command(tmp_path):
    from click.testing import CliRunner
    from vantage_core.cli import cli

    train(tiny(tmp_path / "run", "train.eval_every=0", "data.validation=[]"), progress=False, echo=lambda m: None)
    for p in (tmp_path / "run" / "plots").iterdir():
        p.unlink()
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert {p.name for p in (tmp_path / "run" / "plots").iterdir()} == {"loss.png", "expert_load.png"}
    assert (tmp_path / "run" / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_sweep_writes_one_comparison_table(tmp_path):
    from vantage_core.train.sweep import run_sweep

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"base: {TINY}\nname: routers\nset: {{train.steps: 3, train.eval_every: 0, "
                     f"train.eval_examples: 3}}\nruns:\n  - {{name: topk, model.router: {{name: topk}}}}\n"
                     f"  - {{name: switch, model.router: {{name: switch}}}}\n"
                     f"  - {{name: aux_free, model.router: {{name: aux_free}}}}\n")
    result = run_sweep(sweep, out_dir=tmp_path / "out", progress=False, echo=lambda m: None)
    table = result["markdown"].read_text()
    assert table.splitlines()[0].startswith("| run | validation execution |")
    assert [r["run"] for r in result["rows"]] == ["topk", "switch", "aux_free"]
    for row in result["rows"]:
        assert 0 <= row["accuracy"] <= 1 and row["tokens_per_s"] > 0 and 0 < row["load_balance"] <= 1
    csv_lines = result["csv"].read_text().splitlines()
    assert csv_lines[0].startswith("run,accuracy,best,final_ce,tokens_per_s,load_balance") and len(csv_lines) == 4
    assert result["figure"].read_bytes()[:4] == b"\x89PNG"
    # a second invocation reuses the finished runs instead of training them again
    again = run_sweep(sweep, out_dir=tmp_path / "out", progress=False, echo=lambda m: None)
    assert again["rows"] == result["rows"]
    assert result["curves"].read_bytes()[:4] == b"\x89PNG"  # the evaluation after the last step


def test_validation_curve_counts_training_minutes_only(tmp_path):
    from vantage_core.train.sweep import plot_curves, validation_curve

    records = [{"kind": "train", "step": 1, "step_s": 30.0}, {"kind": "train", "step": 2, "step_s": 30.0},
               {"kind": "eval", "step": 2, "action_exact": 0.25, "seconds": 600.0},
               {"kind": "train", "step": 3, "step_s": 90.0}, {"kind": "eval", "step": 3, "action_exact": 0.5}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    curve = validation_curve(tmp_path, "action_exact")
    assert curve == [(1.0, 0.25), (2.5, 0.5)]
    assert validation_curve(tmp_path / "absent", "action_exact") == []
    assert plot_curves({"a": curve}, tmp_path / "c.png", "action_exact").read_bytes()[:4] == b"\x89PNG"


def test_the_moving_average_resumes_bitwise_and_is_what_the_checkpoint_holds(tmp_path, monkeypatch):
    """train.ema_decay: the checkpoint's model weights are the moving average of the trainable
    weights (not the raw ones, which sit beside them), and an interrupted run resumes to the same
    losses and the same average as one that ran straight through."""
    sets = ["train.steps=10", "train.eval_every=0", "train.save_every=0", "data.validation=[]",
            "train.ema_decay=0.9"]
    train(tiny(tmp_path / "straight", *sets, config=POINTER), progress=False, echo=lambda m: None)
    with monkeypatch.context() as m:
        interrupt_after(m, 4)
        train(tiny(tmp_path / "split", *sets, config=POINTER), progress=False, echo=lambda m: None)
    train(tiny(tmp_path / "split", *sets, config=POINTER), resume=True, progress=False, echo=lambda m: None)
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")

    folder = tmp_path / "straight" / "checkpoints" / "last"
    average = mx.load(str(folder / "model.safetensors"))
    raw = mx.load(str(folder / TRAINING_WEIGHTS))
    assert raw and set(raw) <= set(average)  # the trainable weights only
    assert any(not mx.array_equal(average[k], raw[k]).item() for k in raw)
    resumed = mx.load(str(tmp_path / "split" / "checkpoints" / "last" / "model.safetensors"))
    assert all(mx.array_equal(average[k], resumed[k]).item() for k in average)


def test_the_weight_average_follows_its_decay():
    """One update moves each averaged weight by (1 - decay) of its distance to the raw weight
    (with the ramp (1 + step) / (10 + step) early on), and applied() puts the raw weights back."""
    import mlx.nn as nn

    from vantage_core.train.trainer import WeightAverage

    model = nn.Linear(3, 2)
    start = mx.array(model.weight)
    average = WeightAverage(model, decay=0.5)
    model.weight = start + 1.0
    average.update(model, step=100)  # the ramp (101 / 110) is above 0.5: the decay rules
    assert mx.allclose(average.weights["weight"], start + 0.5).item()
    average.update(model, step=0)  # the ramp: 1 / 10, so 90% of the way
    assert mx.allclose(average.weights["weight"], start + 0.95).item()
    with average.applied(model) as raw:
        assert mx.allclose(model.weight, start + 0.95).item()
        assert mx.allclose(raw["weight"], start + 1.0).item()
    assert mx.allclose(model.weight, start + 1.0).item()


def test_fit_runs_added_callbacks_after_each_step_and_ends_them_in_reverse(tmp_path):
    """build_run makes the parts and fit runs them: a callback added around the standard ones
    sees each step's record, and on_end runs in reverse order, so the one listed last ends before
    the last checkpoint is saved and the one listed first after the report is written."""
    from vantage_core.train.callbacks import Callback
    from vantage_core.train.run import build_run, fit

    seen = []

    class Recorder(Callback):
        def __init__(self, name):
            self.name = name

        def on_step(self, run, record):
            seen.append((self.name, run.trainer.step, record["tokens_per_s"] > 0))

        def on_end(self, run, outcome):
            seen.append((self.name, outcome, (run.folder / "checkpoints" / "last").exists(),
                         (run.folder / "summary.json").exists()))

    run = build_run(tiny(tmp_path / "run", "train.steps=3", "train.eval_every=0", "train.save_every=0",
                         "data.validation=[]"), progress=False, echo=lambda m: None)
    summary = fit(run, [Recorder("first"), *run.callbacks, Recorder("last")])
    assert seen == [("first", 1, True), ("last", 1, True), ("first", 2, True), ("last", 2, True),
                    ("first", 3, True), ("last", 3, True),
                    ("last", "finished", False, False), ("first", "finished", True, True)]
    assert summary["steps"] == 3 and run.batches_drawn == 3
    assert load_trainer_state(tmp_path / "run" / "checkpoints" / "last")["batches"] == 3
