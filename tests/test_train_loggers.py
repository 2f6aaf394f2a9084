"""The logger plugins: ``jsonl`` (read back by ``vantage plot``) and ``wandb`` in offline mode."""

from __future__ import annotations


import pytest

from vantage_core.config import PluginSpec
from vantage_core.plugins import registry
from vantage_core.train.telemetry import Telemetry, read_metrics, trim_metrics


def test_jsonl_logger_round_trip_and_trim(tmp_path):
    t = Telemetry(tmp_path, {"run": {"name": "x"}}, [PluginSpec(name="jsonl")], registry(), total_steps=3,
                  progress=False)
    for step in (1, 2, 3):
        t.log({"step": step, "kind": "train", "loss": 1.0 / step, "lr": 0.1, "tokens_per_s": 10.0,
               "expert_load": [[0.5, 0.5]]})
    t.log({"step": 3, "kind": "eval", "execution": 0.5, "nan_metric": float("nan")})
    t.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 3]
    assert records[-1]["nan_metric"] == "nan"  # JSON has no NaN: written as a string
    trim_metrics(tmp_path, 1)  # what a resume from step 1 does
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]


def test_disabled_telemetry_writes_nothing(tmp_path):
    t = Telemetry(tmp_path, {}, [PluginSpec(name="jsonl")], registry(), total_steps=1, enabled=False)
    t.log({"step": 1, "kind": "train", "loss": 1.0})
    t.close()
    assert not (tmp_path / "metrics.jsonl").exists()  # ranks other than 0 write nothing


@pytest.mark.slow
def test_wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'vantage[wandb]')")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = registry().build("logger", "wandb", str(tmp_path), {"run": {"name": "offline-test"}})
    assert logger.run.settings.mode == "offline"
    logger.log(1, {"step": 1, "kind": "train", "loss": 2.0, "expert_load": [[0.25, 0.75]]})
    logger.log(1, {"step": 1, "kind": "eval", "execution": 0.5})
    logger.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
