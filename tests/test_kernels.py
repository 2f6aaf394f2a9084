"""The native CPU kernels match MLX's own ops in value and gradient.

Tolerances (float32): values within 2e-5 relative + 2e-6 absolute of the MLX reference, gradients
within 1e-4 relative + 1e-5 absolute (the kernels sum in another order and use their own
vectorized exponential, about 2 ulp from expf). Shapes cover odd sizes, single rows, empty
inputs and calls big enough to be split over threads. ``VANTAGE_REQUIRE_NATIVE=1`` (CI) turns a
missing extension into a failure instead of a skip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from vantage_core import kernels

VALUE = dict(rtol=2e-5, atol=2e-6)
GRAD = dict(rtol=1e-4, atol=1e-5)

if not kernels.status().loaded:
    if os.environ.get("VANTAGE_REQUIRE_NATIVE") == "1":
        raise RuntimeError(f"VANTAGE_REQUIRE_NATIVE=1 but the native kernels are not loaded: {kernels.status().reason}")
    pytest.skip(f"native kernels not loaded: {kernels.status().reason}", allow_module_level=True)

# (rows..., width): odd widths, one row, empty, and 300 x 257 (77k elements: split over threads)
SHAPES = [(1, 1), (3, 7), (2, 5, 33), (1, 1023), (0, 16), (300, 257)]


def close(a: mx.array, b: mx.array, tol: dict) -> None:
    np.testing.assert_allclose(np.array(a), np.array(b), **tol)


def both(fn, *args):
    """fn(*args) with the native kernels, then with MLX's ops."""
    with kernels.enabled(True):
        native = fn(*args)
    with kernels.enabled(False):
        reference = fn(*args)
    return native, reference


def grads(fn, *args, argnums=0):
    """Gradients of sum(fn(*args) * fixed random weights), native and reference."""
    out_shape = fn(*args).shape
    weights = mx.random.normal(out_shape, key=mx.random.key(7))
    g = mx.grad(lambda *a: (fn(*a) * weights).sum(), argnums=argnums)
    return both(g, *args)


@pytest.mark.parametrize("shape", SHAPES)
def test_swiglu_matches_mlx(shape):
    x = mx.random.normal((*shape[:-1], 2 * shape[-1]), key=mx.random.key(0)) * 3
    close(*both(kernels.swiglu, x), VALUE)
    close(*grads(kernels.swiglu, x), GRAD)


def test_swiglu_of_a_slice_reads_the_right_elements():
    x = mx.random.normal((6, 40), key=mx.random.key(1))
    view = x[::2, 4:24]  # strided rows, offset start: made contiguous before the kernel
    close(*both(kernels.swiglu, view), VALUE)


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_matches_mlx(shape):
    x = mx.random.normal(shape, key=mx.random.key(2))
    w = mx.random.normal(shape[-1:], key=mx.random.key(3))
    close(*both(kernels.rms_norm, x, w, 1e-5), VALUE)
    for native, reference in zip(*grads(kernels.rms_norm, x, w, 1e-5, argnums=(0, 1))):
        close(native, reference, GRAD)


@pytest.mark.parametrize("shape", SHAPES)
def test_cross_entropy_matches_mlx(shape):
    logits = mx.random.normal(shape, key=mx.random.key(4)) * 4
    targets = mx.random.randint(0, shape[-1], shape[:-1], key=mx.random.key(5))
    close(*both(kernels.cross_entropy, logits, targets), VALUE)
    close(*grads(kernels.cross_entropy, logits, targets), GRAD)


def test_cross_entropy_with_extreme_logits_stays_finite():
    logits = mx.array([[1e4, -1e4, 0.0], [-1e9, -1e9, 5.0]])
    targets = mx.array([1, 2])
    native, reference = both(kernels.cross_entropy, logits, targets)
    close(native, reference, VALUE)
    assert np.isfinite(np.array(native)).all()


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 3, 9, 9), (1, 2, 5, 12), (2, 0, 4), (4, 75, 257)])
def test_softmax_matches_mlx(shape, causal):
    x = mx.random.normal(shape, key=mx.random.key(6)) * 3
    close(*both(lambda a: kernels.softmax(a, causal), x), VALUE)
    close(*grads(lambda a: kernels.softmax(a, causal), x), GRAD)


def test_causal_softmax_gives_later_keys_nothing():
    x = mx.random.normal((1, 4, 6), key=mx.random.key(8))  # 4 queries, the last 4 of 6 keys
    with kernels.enabled(True):
        p = np.array(kernels.softmax(x, causal=True))[0]
    for i in range(4):
        assert (p[i, i + 3:] == 0).all() and abs(p[i, :i + 3].sum() - 1) < 1e-6


def test_attention_matches_mlx_fused_attention():
    q = mx.random.normal((2, 4, 9, 16), key=mx.random.key(9))
    k = mx.random.normal((2, 2, 9, 16), key=mx.random.key(10))  # grouped-query: 2 key/value heads
    v = mx.random.normal((2, 2, 9, 16), key=mx.random.key(11))
    for causal in (False, True):
        close(*both(lambda a, b, c: kernels.attention(a, b, c, 0.25, causal), q, k, v), GRAD)
    keep = mx.arange(9)[None, :] < mx.array([[9], [5]])  # the second request has 5 keys
    bias = mx.where(keep, 0.0, -1e9)[:, None, None, :]  # (B, 1, 1, Tk), as the model's masks
    close(*both(lambda a, b, c: kernels.attention(a, b, c, 0.25, bias=bias), q, k, v), GRAD)
    native, reference = grads(lambda a, b, c: kernels.attention(a, b, c, 0.25, bias=bias), q, k, v, argnums=(0, 1, 2))
    for n, r in zip(native, reference):
        close(n, r, GRAD)


def reference_attention(q, k, v, scale, bias=None, causal=False):
    """Attention in plain MLX ops (differentiable in every input, the bias included)."""
    if k.shape[1] != q.shape[1]:
        k, v = (mx.repeat(a, q.shape[1] // a.shape[1], axis=1) for a in (k, v))
    scores = scale * q @ k.swapaxes(-1, -2) + (0 if bias is None else bias)
    if causal:
        Tq, Tk = scores.shape[-2:]
        scores = mx.where(mx.arange(Tk)[None] <= mx.arange(Tq)[:, None] + Tk - Tq, scores, -mx.inf)
    return mx.softmax(scores, axis=-1, precise=True) @ v


@pytest.mark.parametrize("B, H, H_kv, Tq, Tk, hd", [(1, 1, 1, 1, 1, 1), (2, 4, 2, 3, 7, 5), (3, 4, 4, 40, 65, 64),
                                                  (2, 2, 1, 0, 4, 8), (2, 2, 2, 3, 0, 8)])
def test_attention_reads_transposed_views_and_differentiates_its_bias(B, H, H_kv, Tq, Tk, hd):
    """The model's case: q, k, v are (B, T, H, hd) projections seen as (B, H, T, hd), the bias a
    learned score term (relation-aware attention); gradients reach all four. Odd sizes, one
    query, no queries, no keys, and a call split over threads (3 x 4 heads of 40 x 65)."""
    proj = lambda T, n, i: mx.random.normal((B, T, n, hd), key=mx.random.key(i)).transpose(0, 2, 1, 3)
    q, k, v = proj(Tq, H, 30), proj(Tk, H_kv, 31), proj(Tk, H_kv, 32)
    bias = mx.random.normal((B, H, Tq, Tk), key=mx.random.key(33))
    w = mx.random.normal((B, H, Tq, hd), key=mx.random.key(34))
    with kernels.enabled(True):
        out = kernels.attention(q, k, v, 0.3, bias=bias)
        g = mx.grad(lambda *a: (kernels.attention(*a[:3], 0.3, bias=a[3]) * w).sum(), argnums=(0, 1, 2, 3))(q, k, v, bias)
    ref = reference_attention(q, k, v, 0.3, bias)
    ref_g = mx.grad(lambda *a: (reference_attention(*a[:3], 0.3, a[3]) * w).sum(), argnums=(0, 1, 2, 3))(q, k, v, bias)
    assert out.shape == (B, H, Tq, hd)
    if Tk:  # no keys: the native kernel gives zeros where plain softmax has nothing to normalize
        close(out, ref, GRAD)
        for n, r in zip(g, ref_g):
            close(n, r, GRAD)
    else:
        assert not np.array(out).any()
    if Tq and Tk and Tq <= Tk:  # causal, the queries being the last Tq positions (a cache holds the rest)
        with kernels.enabled(True):
            causal = kernels.attention(q, k, v, 0.3, causal=True)
        close(causal, reference_attention(q, k, v, 0.3, causal=True), GRAD)


def test_attention_packs_operands_whose_last_axis_is_strided():
    q = mx.random.normal((2, 3, 6, 5), key=mx.random.key(40)).swapaxes(-1, -2)  # (2, 3, 5, 6), hd strided
    k = mx.random.normal((2, 3, 7, 6), key=mx.random.key(41))[:, :, ::2]  # every other key
    v = mx.random.normal((2, 3, 4, 6), key=mx.random.key(42))
    with kernels.enabled(True):
        out = kernels.attention(q, k, v, 0.5)
    close(out, reference_attention(q, k, v, 0.5), GRAD)


def test_attention_refuses_mismatched_heads_with_the_reason():
    from vantage_core.kernels import _native

    q = mx.zeros((1, 3, 2, 4))
    with pytest.raises(ValueError, match="must divide the query heads"):
        _native.attention(q, mx.zeros((1, 2, 2, 4)), mx.zeros((1, 2, 2, 4)), 1.0)
    with pytest.raises(ValueError, match="must be 4-D"):
        _native.attention(q[0], q[0], q[0], 1.0)


def test_other_dtypes_use_mlx_ops():
    x = mx.random.normal((4, 8), key=mx.random.key(12)).astype(mx.bfloat16)
    gate, up = mx.split(x, 2, axis=-1)
    assert mx.array_equal(kernels.swiglu(x), nn.silu(gate) * up)


def test_bad_shapes_are_refused_with_the_reason():
    from vantage_core.kernels import _native

    with pytest.raises(ValueError, match="even size"):
        _native.swiglu(mx.zeros((2, 3)))
    with pytest.raises(ValueError, match="weight must be 1-D"):
        _native.rms_norm(mx.zeros((2, 3)), mx.ones((4,)), 1e-5)
    with pytest.raises(ValueError, match="targets must have the shape"):
        _native.cross_entropy(mx.zeros((2, 3)), mx.zeros((3,), mx.int32))


def test_a_model_step_gives_the_same_loss_and_gradients_either_way():
    from vantage_core.config import ModelConfig, PluginSpec
    from vantage_core.model import build_model, loss
    from vantage_core.model.params import _VocabOnly

    cfg = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, num_experts=4, expert_hidden=48,
                      max_seq_len=32, router=PluginSpec(name="topk", k=2), schema_encoder=PluginSpec(name="none"))
    mx.random.seed(0)
    model = build_model(cfg, _VocabOnly(97))
    rng = np.random.default_rng(0)
    tokens = mx.array(rng.integers(0, 97, (3, 17)).astype(np.int32))
    batch = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:], "loss_mask": mx.ones((3, 16))}
    step = nn.value_and_grad(model, loss)
    ((native_loss, _), native_grads), ((mlx_loss, _), mlx_grads) = both(step, model, batch)
    close(native_loss, mlx_loss, VALUE)
    flat_native = dict(tree_flatten(native_grads))
    for name, g in tree_flatten(mlx_grads):
        close(flat_native[name], g, GRAD)


@pytest.mark.parametrize("env, want", [({"OPENBLAS_NUM_THREADS": "1"}, "1 thread)"),
                                       ({"OPENBLAS_NUM_THREADS": "1", "VANTAGE_KERNEL_THREADS": "3"}, "3 threads)"),
                                       ({"VANTAGE_KERNEL_THREADS": "many"}, "VANTAGE_KERNEL_THREADS='many': expected")])
def test_kernel_threads_follow_the_environment(env, want):
    """Processes sharing a machine (OPENBLAS_NUM_THREADS=1 each) keep the kernels to their share."""
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "VANTAGE_KERNEL_THREADS")}
    out = subprocess.run([sys.executable, "-c", "from vantage_core import kernels; print(kernels.status().reason)"],
                         env={**base, **env}, capture_output=True, text=True, check=True).stdout
    assert want in out


@pytest.mark.parametrize("shape", [(0, 8), (1,), (3, 7), (300, 257)])
def test_dropout_keeps_one_minus_p_scaled_and_its_gradient_uses_the_same_mask(shape):
    x = mx.random.normal(shape, key=mx.random.key(20)) + 5  # no zeros of its own
    p = 0.3
    mx.random.seed(1)
    y = np.array(kernels.dropout(x, p))
    kept = y != 0
    np.testing.assert_allclose(y[kept], np.array(x)[kept] / (1 - p), **VALUE)
    if x.size > 10_000:  # the keep rate of 77k draws: within 5 standard deviations of 0.7
        assert abs(kept.mean() - (1 - p)) < 5 * (p * (1 - p) / x.size) ** 0.5
    mx.random.seed(1)  # the same seed draws the same mask, and the gradient applies it
    assert np.array_equal(np.array(kernels.dropout(x, p)), y)
    mx.random.seed(1)
    w = mx.random.normal(shape, key=mx.random.key(21))
    grad = np.array(mx.grad(lambda a: (kernels.dropout(a, p) * w).sum())(x))
    np.testing.assert_allclose(grad, np.where(kept, np.array(w) / (1 - p), 0.0), **VALUE)
    assert not np.array_equal(np.array(kernels.dropout(x, p)), y) or x.size <= 1  # the next draw differs


def test_dropout_masks_are_independent_of_position_and_of_each_other():
    ones = mx.ones((1 << 18,))
    mx.random.seed(2)
    a, b = (np.array(kernels.dropout(ones, 0.5)) != 0 for _ in range(2))
    for u, v in ((a[:-1], a[1:]), (a, b)):  # neighbours, and two draws over the same elements
        assert abs(np.corrcoef(u, v)[0, 1]) < 0.02
    with kernels.enabled(False):  # MLX's path keeps the same rate
        assert abs((np.array(kernels.dropout(ones, 0.5)) != 0).mean() - 0.5) < 0.01


def test_dropout_refuses_a_probability_outside_zero_to_one():
    from vantage_core.kernels import _native
    from vantage_core.model.transformer import Dropout

    with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
        _native.dropout(mx.zeros((2,)), mx.array(0, mx.uint32), 1.0)
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        Dropout(1.5)


@pytest.mark.parametrize("native", [True, False])
def test_adamw_matches_mlx_optimizers_adamw_with_scaled_gradients(native):
    """The trainer's AdamW (one multi-tensor kernel) against mlx.optimizers.AdamW fed the same
    gradients already scaled: parameters and both moments, three steps, tensors of odd sizes, one
    empty, one big enough to split over threads."""
    import mlx.optimizers as optim
    from mlx.utils import tree_map
    from vantage_core.train.trainer import AdamW

    def tree(i):
        return {"w": mx.random.normal((300, 257), key=mx.random.key(i)),
                "layers": [{"b": mx.random.normal((7,), key=mx.random.key(i + 1))}, {"e": mx.zeros((0, 3))}]}

    ours, reference = AdamW(1e-2, betas=[0.9, 0.95], weight_decay=0.1), optim.AdamW(1e-2, betas=[0.9, 0.95], weight_decay=0.1)
    p_ours = p_ref = tree(50)
    for step in range(3):
        g = tree(60 + 2 * step)
        with kernels.enabled(native):
            p_ours = ours.apply_gradients(g, p_ours, mx.array(0.25))
        p_ref = reference.apply_gradients(tree_map(lambda a: a * 0.25, g), p_ref)
    for (name, a), (_, b) in zip(tree_flatten(p_ours), tree_flatten(p_ref)):
        close(a, b, GRAD)
    for (name, a), (_, b) in zip(tree_flatten(ours.state), tree_flatten(reference.state)):
        close(a, b, GRAD)
    assert ours.state["step"].item() == 3


@pytest.mark.parametrize("N, k, d, capacity", [(1, 1, 1, None), (37, 2, 33, None), (300, 2, 256, None), (50, 2, 16, 0.5)])
def test_moe_combine_matches_mlx_with_and_without_dropped_slots(N, k, d, capacity):
    """The MoE block's combine, native against MLX's ops, in value and in the gradients of the
    expert rows and the router's weights; capacity 0.5 drops about half the token-slots."""
    from vantage_core.model.moe import plan_dispatch

    rng = np.random.default_rng(N)
    indices = np.stack([rng.permutation(4)[:k] for _ in range(N)]).astype(np.int32)
    plan = plan_dispatch(indices, 4, capacity)
    assert (plan.dropped > 0) == (capacity is not None)
    rows = mx.random.normal((sum(plan.counts), d), key=mx.random.key(70))
    weights = mx.random.uniform(shape=(N, k), key=mx.random.key(71))
    fn = lambda r, w: kernels.moe_combine(r, w, plan.inv, plan.slot_of_row)
    close(*both(fn, rows, weights), VALUE)
    native, reference = grads(fn, rows, weights, argnums=(0, 1))
    for n, r in zip(native, reference):
        close(n, r, GRAD)
