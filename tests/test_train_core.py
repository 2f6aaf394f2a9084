"""The trainer's step and checkpoints on a stand-in model: resume equivalence, atomic writes,
the NaN guard, gradient accumulation and the learning-rate schedule."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from train_standin import TinyLM, batch, loss_fn, to_arrays  # noqa: E402

import vantage_core  # noqa: F401,E402
import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from vantage_core.config import TrainConfig  # noqa: E402
from vantage_core.model.io import load_trainer_state, plugin_list, resolve_checkpoint, save_checkpoint  # noqa: E402
from vantage_core.train.trainer import Trainer, TrainingDiverged, lr_schedule  # noqa: E402


def make_trainer(compile=True, grad_accum=1, **kw):
    mx.random.seed(0)
    model = TinyLM()
    mx.eval(model.parameters())
    cfg = TrainConfig(steps=20, lr=3e-2, warmup_steps=3, compile=compile, grad_accum=grad_accum, **kw)
    return Trainer(model, loss_fn, cfg)


def run(trainer, start, stop):
    return [trainer.train_step([to_arrays(batch(i))])["loss"] for i in range(start, stop)]


def weights(model):
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())}


@pytest.mark.parametrize("compile", [True, False])
def test_resume_gives_the_same_losses(tmp_path, compile):
    straight = run(make_trainer(compile), 0, 20)

    first = make_trainer(compile)
    losses = run(first, 0, 10)
    save_checkpoint(tmp_path / "last", model=first.model, optimizer=first.optimizer,
                    trainer_state={"step": first.step})
    # a fresh process would start from another random state: resume must not depend on it
    mx.random.seed(123)
    second = make_trainer(compile)
    mx.random.seed(456)
    assert second.restore(tmp_path / "last")["step"] == 10
    losses += run(second, 10, 20)
    assert losses == straight  # bitwise: the same computation in the same order
    assert straight[-1] < straight[0]


def test_checkpoint_holds_everything(tmp_path):
    t = make_trainer()
    run(t, 0, 2)
    path = save_checkpoint(tmp_path / "ck", model=t.model, optimizer=t.optimizer,
                           trainer_state={"step": 2}, config_yaml="run: {}\n",
                           plugins=plugin_list(),
                           save_tokenizer=lambda d: (d.mkdir(), (d / "tok.model").write_text("x")))
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.yaml", "model.safetensors", "optimizer.safetensors", "plugins.json",
                     "rng.safetensors", "tokenizer", "trainer_state.json"]
    plugins = __import__("json").loads((path / "plugins.json").read_text())
    assert {"name": "jsonl", "kind": "logger", "distribution": "vantage", "version": "0.1.0"} in plugins


def test_a_crash_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    t = make_trainer()
    run(t, 0, 3)
    save_checkpoint(tmp_path / "last", model=t.model, optimizer=t.optimizer, trainer_state={"step": 3})
    saved = weights(t.model)
    run(t, 3, 5)

    real_save = mx.save_safetensors
    def crash_on_optimizer(path, arrays, *a, **k):
        if "optimizer" in str(path):
            Path(path).write_bytes(b"torn")  # half a file, then the crash
            raise OSError("disk full")
        return real_save(path, arrays, *a, **k)
    monkeypatch.setattr(mx, "save_safetensors", crash_on_optimizer)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "last", model=t.model, optimizer=t.optimizer, trainer_state={"step": 5})
    monkeypatch.undo()

    assert load_trainer_state(tmp_path / "last")["step"] == 3
    assert not list(tmp_path.glob(".last.tmp-*"))  # no debris left behind
    fresh = make_trainer()
    fresh.restore(tmp_path / "last")
    for k, v in weights(fresh.model).items():
        np.testing.assert_array_equal(v, saved[k])


def test_a_crash_between_the_renames_falls_back_to_the_old_copy(tmp_path):
    t = make_trainer()
    save_checkpoint(tmp_path / "last", model=t.model, optimizer=t.optimizer, trainer_state={"step": 7})
    os.replace(tmp_path / "last", tmp_path / "last.old")  # the first rename happened, not the second
    assert resolve_checkpoint(tmp_path / "last") == tmp_path / "last.old"
    assert load_trainer_state(tmp_path / "last")["step"] == 7
    # the next save completes the swap and cleans up
    save_checkpoint(tmp_path / "last", model=t.model, optimizer=t.optimizer, trainer_state={"step": 8})
    assert load_trainer_state(tmp_path / "last")["step"] == 8
    assert not (tmp_path / "last.old").exists()


def test_nan_loss_stops_without_touching_the_weights():
    t = make_trainer()
    run(t, 0, 2)
    before = weights(t.model)
    bad = to_arrays(batch(2))
    t.loss_fn  # the stand-in reads tokens; an embedding row of NaN poisons the loss
    t.model.embed.weight = t.model.embed.weight * mx.nan
    poisoned = weights(t.model)
    with pytest.raises(TrainingDiverged, match=r"step 3: the loss is nan"):
        t.train_step([bad])
    after = weights(t.model)
    for k in before:
        np.testing.assert_array_equal(after[k], poisoned[k])
    assert t.step == 2


def test_accumulation_equals_one_big_batch():
    big = make_trainer(compile=False)
    small = make_trainer(compile=False, grad_accum=2)
    for i in range(3):
        b = batch(i)
        halves = [{k: v[:4] for k, v in b.items()}, {k: v[4:] for k, v in b.items()}]
        r1 = big.train_step([to_arrays(b)])
        r2 = small.train_step([to_arrays(h) for h in halves])
        assert r1["loss"] == pytest.approx(r2["loss"], rel=1e-5)
    for k, v in weights(big.model).items():
        np.testing.assert_allclose(weights(small.model)[k], v, rtol=1e-4, atol=1e-6)


def test_telemetry_fields():
    t = make_trainer()
    r = t.train_step([to_arrays(batch(0))])
    assert set(r) >= {"loss", "lr", "grad_norm", "ce", "z", "expert_load"}
    assert len(r["expert_load"]) == 2 and sum(r["expert_load"][0]) == pytest.approx(1.0)
    assert r["lr"] == 0.0  # the first warmup step


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    s = lr_schedule(cfg)
    lrs = [s(mx.array(i)).item() for i in range(101)]
    assert lrs[0] == 0 and lrs[10] == pytest.approx(1e-3)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:11]))
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[100] == pytest.approx(1e-4, rel=1e-3)
