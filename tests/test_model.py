"""The decoder on baby configs (d=32, 4 experts): shapes, seeds, cache, loss masking, counts."""

from __future__ import annotations

import numpy as np
import pytest

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from vantage_core.config import ModelConfig, PluginSpec
from vantage_core.errors import ConfigError, PluginError
from vantage_core.model import build_model, loss
from vantage_core.model.params import count_model, count_parameters

VOCAB = 61


class TinyTokenizer:
    """Stands in for the decoder's tokenizer: one id per character."""

    vocab_size = VOCAB
    pad_id = 0

    def encode(self, text: str) -> list[int]:
        return [1 + ord(c) % (VOCAB - 1) for c in text]


def baby_config(**overrides) -> ModelConfig:
    fields = dict(d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, num_experts=4, expert_hidden=32,
                  cross_attention_every=2, max_seq_len=64,
                  schema_encoder=PluginSpec(name="transformer", dim=32, n_layers=1, n_heads=2))
    fields.update(overrides)
    return ModelConfig(**fields)


def make_batch(model, B=2, T=12, seed=1):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (B, T + 1)).astype(np.int32)
    ids, mask = model.schema_encoder.tokenize(["singer: id, name, age", "how many singers?"][:B]) \
        if model.schema_encoder is not None else (None, None)
    batch = {"tokens": mx.array(tokens[:, :-1]), "targets": mx.array(tokens[:, 1:]),
             "loss_mask": mx.ones((B, T))}
    if ids is not None:
        batch["schema"] = {"schema_ids": mx.array(ids), "schema_mask": mx.array(mask)}
    return batch


def test_output_shapes_and_aux():
    mx.random.seed(0)
    model = build_model(baby_config(), TinyTokenizer())
    batch = make_batch(model)
    memory = model.encode_schema(batch["schema"])
    assert memory.states.shape == (*batch["schema"]["schema_ids"].shape, 32)
    logits, aux = model(batch["tokens"], memory)
    assert logits.shape == (2, 12, VOCAB)
    assert [l.has_cross for l in model.layers] == [False, True, False, True]
    assert len(aux["loads"]) == 4 and all(l.shape == (4,) for l in aux["loads"])
    assert all(abs(l.sum().item() - 1) < 1e-5 for l in aux["loads"])
    assert aux["balance"].item() > 0 and aux["z"].item() > 0  # on by default
    assert abs(aux["aux_loss"].item() - aux["balance"].item() - aux["z"].item()) < 1e-6


def test_dense_layers_and_no_schema_encoder():
    model = build_model(baby_config(moe_every=2, schema_encoder=PluginSpec(name="none")), TinyTokenizer())
    assert model.schema_encoder is None and not any(l.has_cross for l in model.layers)
    logits, aux = model(mx.zeros((1, 5), mx.int32))
    assert logits.shape == (1, 5, VOCAB) and len(aux["loads"]) == 2


def test_loss_only_where_mask_is_one():
    mx.random.seed(0)
    model = build_model(baby_config(), TinyTokenizer())
    batch = make_batch(model)
    mask = np.ones((2, 12), np.float32)
    mask[:, :5] = 0
    batch["loss_mask"] = mx.array(mask)
    base, metrics = loss(model, batch)
    changed = dict(batch)
    targets = np.array(batch["targets"])
    targets[:, :5] = (targets[:, :5] + 7) % VOCAB
    changed["targets"] = mx.array(targets)
    assert loss(model, changed)[0].item() == pytest.approx(base.item(), rel=1e-6)
    targets[:, 7] = (targets[:, 7] + 7) % VOCAB  # a masked-in position does count
    changed["targets"] = mx.array(targets)
    assert loss(model, changed)[0].item() != pytest.approx(base.item(), rel=1e-6)
    # The CE over the kept rows equals a full-logit computation.
    logits, _ = model(batch["tokens"], model.encode_schema(batch["schema"]))
    ce = nn.losses.cross_entropy(logits, batch["targets"], reduction="none")
    assert metrics["ce"].item() == pytest.approx((ce * batch["loss_mask"]).sum().item() / mask.sum(), rel=1e-5)
    assert metrics["tokens"].item() == mask.sum() and metrics["loads"].shape == (4, 4)


def _train(seed: int, steps: int = 2):
    mx.random.seed(seed)
    model = build_model(baby_config(router=PluginSpec(name="topk", noise=0.5)), TinyTokenizer())
    opt = optim.AdamW(1e-2)
    step = nn.value_and_grad(model, loss)
    losses = []
    for _ in range(steps):
        (value, _), grads = step(model, make_batch(model))
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(value.item())
    return losses, dict(tree_flatten(model.parameters()))


def test_a_seed_makes_runs_identical():
    losses_a, params_a = _train(3)
    losses_b, params_b = _train(3)
    losses_c, _ = _train(4)
    assert losses_a == losses_b
    assert all(mx.array_equal(params_a[k], params_b[k]).item() for k in params_a)
    assert losses_a != losses_c


@pytest.mark.parametrize("n_kv_heads", [4, 2])
def test_cache_gives_the_same_greedy_tokens(n_kv_heads):
    mx.random.seed(0)
    model = build_model(baby_config(n_kv_heads=n_kv_heads), TinyTokenizer())
    model.eval()
    batch = make_batch(model, T=7)
    memory = model.encode_schema(batch["schema"])
    prompt = batch["tokens"]

    full = prompt
    for _ in range(20):  # recompute everything at every step
        logits, _ = model(full, memory)
        full = mx.concatenate([full, logits[:, -1].argmax(-1)[:, None].astype(mx.int32)], axis=1)

    cache = model.make_cache()
    logits, _ = model(prompt, memory, cache=cache)
    assert cache[1].cross_kv is not None and cache[0].cross_kv is None
    cached = [logits[:, -1].argmax(-1)[:, None].astype(mx.int32)]
    for _ in range(19):  # schema K/V come from the cache now
        logits, _ = model(cached[-1], cache=cache)
        cached.append(logits[:, -1].argmax(-1)[:, None].astype(mx.int32))
    assert cache[0].offset == 7 + 19
    assert np.array_equal(np.array(full[:, 7:]), np.array(mx.concatenate(cached, axis=1)))


def test_params_counting_matches_a_built_model():
    cfg = baby_config(expert=PluginSpec(name="shared_swiglu"), router=PluginSpec(name="topk", k=2))
    counted = count_parameters(cfg, vocab_size=VOCAB)
    mx.random.seed(0)
    model = build_model(cfg, TinyTokenizer())
    mx.eval(model.parameters())
    real = sum(v.size for _, v in tree_flatten(model.parameters()))
    assert counted.total == real
    routed = 4 * 4 * 3 * 32 * 32  # layers * experts * (gate, up, down) * d * h
    assert counted.routed == routed
    assert counted.active == real - routed + routed * 2 // 4
    assert count_model(model) == counted


def test_param_counts_of_the_size_configs():
    from pathlib import Path

    from vantage_core.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs"
    targets = {"small": (2e9, 250e6), "medium": (8e9, 1e9), "large": (24e9, 3e9)}
    for name, (total, active) in targets.items():
        counted = count_parameters(load_config(root / f"{name}.yaml", registry=False).model)
        assert abs(counted.total / total - 1) < 0.05, (name, counted.total)
        assert abs(counted.active / active - 1) < 0.05, (name, counted.active)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="vocab_size"):
        build_model(baby_config(vocab_size=100), TinyTokenizer())
    with pytest.raises(ValueError, match="3 must divide n_heads"):  # refused by the config itself
        baby_config(n_kv_heads=3)
    with pytest.raises(PluginError, match="accepts"):
        build_model(baby_config(router=PluginSpec(name="topk", kk=2)), TinyTokenizer())
    with pytest.raises(ValueError, match="k: 9 is more than num_experts"):  # refused by the config itself
        baby_config(router=PluginSpec(name="topk", k=9))
