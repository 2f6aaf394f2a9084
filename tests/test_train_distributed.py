"""Two ranks on loopback (MLX's ring backend) compute the same update as one process with the
same global batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
needs_launcher = pytest.mark.skipif(shutil.which("mlx.launch") is None, reason="mlx.launch not on PATH")


def _run(cmd, timeout=120):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@needs_launcher
def test_two_ranks_match_one_process(tmp_path):
    script = HERE / "train_dist_standin.py"
    _run([sys.executable, script, tmp_path / "one.npz"])
    _run(["mlx.launch", "-n", "2", "--backend", "ring", sys.executable, script, tmp_path / "two.npz"])
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert int(one["size"]) == 1 and int(two["size"]) == 2
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=1e-5)
    names = [k for k in one.files if k not in ("losses", "size")]
    assert names
    for k in names:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-4, atol=1e-6, err_msg=k)
    assert not np.allclose(one["out.weight"], 0)


@needs_launcher
@pytest.mark.slow
@pytest.mark.parametrize("config,distill", [("train_tiny.yaml", False), ("train_tiny_pointer.yaml", False),
                                            ("train_tiny_pointer.yaml", True)],
                         ids=["tokens", "actions", "actions_distilled"])
def test_vantage_train_two_ranks_match_one_process(tmp_path, config, distill):
    """The real command: ``mlx.launch -n 2 --backend ring vantage train`` against one process,
    same global batch, for the token model and the pointer model (also distilled from a teacher:
    each rank's rows carry their teacher entries). The routers' auxiliary losses are off here: they
    are computed per rank (as in any data-parallel MoE), which is a different objective, not a
    float error."""
    import mlx.core as mx

    tiny = HERE / "fixtures" / config
    common = ["--config", str(tiny), "--no-progress", "--set", "train.steps=4", "--set", "train.eval_every=0",
              "--set", "data.validation=[]", "--set", "model.router.balance_weight=0.0",
              "--set", "model.router.z_weight=0.0"]
    cache = {"VANTAGE_CACHE": str(tmp_path / "cache")}
    os.environ.update(cache)
    try:
        if distill:
            _run(["vantage", "train", *common, "--set", f"run.dir={tmp_path / 'teacher'}", "--set", "run.seed=1"],
                 timeout=300)
            common += ["--set", f"train.distill.teachers=[{tmp_path / 'teacher'}]"]
        _run(["vantage", "train", *common, "--set", f"run.dir={tmp_path / 'one'}"], timeout=300)
        _run(["mlx.launch", "-n", "2", "--backend", "ring", "vantage", "train", *common,
              "--set", f"run.dir={tmp_path / 'two'}"], timeout=300)
    finally:
        for k in cache:
            os.environ.pop(k, None)
    one = mx.load(str(tmp_path / "one" / "checkpoints" / "last" / "model.safetensors"))
    two = mx.load(str(tmp_path / "two" / "checkpoints" / "last" / "model.safetensors"))
    assert one.keys() == two.keys()
    for k in one:
        np.testing.assert_allclose(np.array(two[k]), np.array(one[k]), rtol=1e-3, atol=1e-5, err_msg=k)
    state = json.loads((tmp_path / "two" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 4
    if distill:  # both runs learned from the teacher's entries too
        for run in ("one", "two"):
            records = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            assert all("distill" in r for r in records if r["kind"] == "train") and len(records) >= 4
