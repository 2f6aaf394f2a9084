"""Packing (vantage_core/model/packing.py): the decoder's and the relation mixer's position-wise
layers on the real positions only give the padded computation's loss and gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from vantage_core.config import load_config
from vantage_core.model.packing import Packing, packing_indices

TINY = {
    "run": {"name": "tiny_packing"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 96, "num_experts": 4,
              "expert_hidden": 32, "cross_attention_every": 1, "tie_embeddings": False,
              "heads": ["vocab", "pointer", "copy"],
              # no auxiliary losses: they average over the positions routed, padding included
              # when it is not packed
              "router": {"name": "topk", "k": 2, "balance_weight": 0.0, "z_weight": 0.0},
              "schema_encoder": {"name": "linked", "n_layers": 2, "n_heads": 2, "hidden": 64, "dropout": 0.0,
                                 "relations": True}},
    "data": {"target": "actions", "linker": {"name": "lexical"},
             "train": [{"name": "synthetic", "n_databases": 6, "examples_per_db": 4}],
             "validation": [], "tokenizer": {"name": "sql_actions"}},
    "train": {"steps": 1, "batch_size": 8, "select_metric": "action_exact"},
}


def test_packing_indices_and_round_trip():
    mask = np.array([[1, 1, 0], [1, 0, 0]], bool)
    idx = packing_indices(mask)
    assert idx["rows"].tolist() == [0, 1, 3] and idx["inv"].ravel().tolist() == [0, 1, 3, 2, 3, 3]
    assert packing_indices(np.ones((2, 3), bool)) is None  # nothing to skip
    assert packing_indices(np.zeros((2, 0), bool)) is None
    packing = Packing.from_mask(mask)
    x = mx.arange(12, dtype=mx.float32).reshape(2, 3, 2)
    packed = packing.pack(x)
    assert packed.tolist() == [[0, 1], [2, 3], [6, 7]]
    assert packing.unpack(packed).tolist() == [[[0, 1], [2, 3], [0, 0]], [[6, 7], [0, 0], [0, 0]]]
    # the backward passes: pack's is unpack and unpack's is pack
    w = mx.arange(6, dtype=mx.float32).reshape(3, 2) + 1
    g = mx.grad(lambda a: (packing.pack(a) * w).sum())(x)
    assert g.tolist() == [[[1, 2], [3, 4], [0, 0]], [[5, 6], [0, 0], [0, 0]]]
    g = mx.grad(lambda a: (packing.unpack(a) * x).sum())(packed)
    assert g.tolist() == packed.tolist()


@pytest.fixture(scope="module")
def model_and_batch(tmp_path_factory):
    from vantage_core.model import build_model
    from vantage_core.plugins import registry
    from vantage_core.train.distributed import init_world
    from vantage_core.train.run import training_data

    root = tmp_path_factory.mktemp("packing")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(root / "cache"))  # this module's own frozen-state cache
        cfg = load_config(base=TINY)
        reg = registry()
        data = training_data(cfg, reg, init_world(), Path(root / "tok"), lambda *_: None, progress=False)
        mx.random.seed(0)
        model = build_model(cfg.model, data.tokenizer, reg)
        # rows of different schema sizes, questions and SQL lengths: padding on every axis
        order = np.argsort([len(f["item_texts"]) * 1000 + len(f["actions"]) for f in data.train.feats])
        rows = order[np.linspace(0, len(order) - 1, 6).astype(int)]
        batch = data.collate(rows)
        yield model, batch


def test_packed_loss_and_gradients_match_the_padded_ones(model_and_batch):
    from vantage_core.model import loss
    from vantage_core.train.run import model_arrays

    model, batch = model_and_batch
    assert not batch["padding_mask"].all()
    assert not np.concatenate([batch["q_mask"], batch["item_mask"]], axis=1).all()
    packed, padded = model_arrays(model, batch, pack=True), model_arrays(model, batch, pack=False)
    assert {"pack_rows", "pack_inv"} <= set(packed) and {"pack_rows", "pack_inv"} <= set(packed["schema"])
    assert not any(k.startswith("pack_") for k in (*padded, *padded["schema"]))
    model.train()  # dropout 0: the same computation
    results = []
    for arrays in (packed, padded):
        (value, metrics), grads = nn.value_and_grad(model, loss)(model, arrays)
        results.append((value, metrics, dict(tree_flatten(grads))))
    (v1, m1, g1), (v0, m0, g0) = results
    # float32; the two paths sum the same terms in other orders
    assert abs(float(v1) - float(v0)) < 1e-5 * max(1.0, abs(float(v0)))
    assert np.allclose(np.array(m1["loads"]).sum(-1), 1.0)  # shares of real tokens' slots
    assert g1.keys() == g0.keys()
    touched = 0
    for name, g in g0.items():
        a, b = np.array(g1[name]), np.array(g)
        assert np.allclose(a, b, rtol=1e-4, atol=1e-6), (name, np.abs(a - b).max())
        touched += bool(np.abs(b).max() > 0)
    assert touched > len(g0) // 2  # the gradients compared are not all zero


def test_packed_training_step_runs_and_can_be_switched_off(model_and_batch, tmp_path, monkeypatch):
    from vantage_core.train.run import train

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    summaries = []
    for pack in (True, False):
        cfg = load_config(base={**TINY, "run": {"name": "p", "dir": str(tmp_path / f"run{pack}")},
                                "train": {**TINY["train"], "steps": 2, "pack_padding": pack, "eval_every": 0,
                                          "save_every": 0}})
        summaries.append(train(cfg, overwrite=True, progress=False, echo=lambda *_: None))
    assert [s["steps"] for s in summaries] == [2, 2]
    # same seed, same batches, no dropout or auxiliary loss: the same training either way
    packed, padded = (s["final_loss"] for s in summaries)
    assert abs(packed - padded) < 1e-4 * max(1.0, abs(padded))


def test_packed_logits_match_at_real_positions(model_and_batch):
    """What teacher-forced validation reads (vantage_core/train/evaluation.py)."""
    model, batch = model_and_batch
    model.eval()
    memory = model.encode_schema(model.schema_inputs(batch))
    tokens = mx.array(batch["tokens"])
    padded, _ = model(tokens, memory)
    packing = Packing.from_mask(batch["padding_mask"])
    h, _ = model.hidden(tokens, memory, packing=packing)
    assert h.shape == (int(batch["padding_mask"].sum()), model.args.d_model)
    packed = model.logits(h, memory, packing)
    real = batch["padding_mask"] > 0
    assert packed.shape == padded.shape
    assert np.allclose(np.array(packed)[real], np.array(padded)[real], rtol=1e-4, atol=1e-4)
