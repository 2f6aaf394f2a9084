"""benchmarks/step_profile.py on baby sizes: the host-read-free dispatches it times compute what
the model's sorted dispatch computes, its host-read counter counts and puts everything back, and
its breakdown accounts for the whole step."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from vantage_core.model import moe as moe_module
from vantage_core.model.moe import MoEBlock
from vantage_core.plugins import registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import step_profile  # noqa: E402

D, E, H = 32, 4, 16


def swiglu_block(k: int = 2) -> MoEBlock:
    reg = registry()
    return MoEBlock(reg.build("router", "topk", D, E, k=k), reg.build("expert", "swiglu", D, H, E))


def values_and_grads(block: MoEBlock, dispatch, x: mx.array, cotangent: mx.array):
    def objective(params, x):
        block.update(params)
        y, routing = dispatch(block, x)
        return (y * cotangent).sum() + sum(routing.aux_losses.values(), mx.array(0.0))

    value, (g_params, g_x) = mx.value_and_grad(objective, argnums=(0, 1))(block.trainable_parameters(), x)
    return value.item(), dict(tree_flatten(g_params)), np.array(g_x)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", ["dense: every expert on every token", "gather_mm, sorted on the device"])
def test_host_read_free_dispatches_match_the_sorted_dispatch_in_values_and_gradients(name, k):
    """Each probe dispatch gives the model's outputs, balancing and z losses, and gradients to
    every weight and to the input, within float32 rounding (atol 1e-5)."""
    mx.random.seed(0)
    block = swiglu_block(k)
    x, cotangent = mx.random.normal((40, D)), mx.random.normal((40, D))
    value, grads, g_x = values_and_grads(block, lambda b, v: b(v), x, cotangent)
    probe_value, probe_grads, probe_g_x = values_and_grads(block, step_profile.DISPATCHES[name], x, cotangent)
    assert abs(probe_value - value) <= 1e-5 * max(1.0, abs(value))
    assert np.allclose(probe_g_x, g_x, atol=1e-5)
    assert grads.keys() == probe_grads.keys()
    for key in grads:
        assert np.allclose(np.array(probe_grads[key]), np.array(grads[key]), atol=1e-5), key


def test_host_reads_counts_the_dispatch_and_scalar_reads_and_restores_them():
    """Inside ``counting()`` one MoE forward pass makes one dispatch read and ``.item()`` one
    trainer read; outside, numpy and the array's methods are the originals again."""
    block = swiglu_block()
    item = mx.array.item
    reads = step_profile.HostReads()
    with reads.counting():
        mx.eval(block(mx.random.normal((10, D)))[0])
        mx.array(2.0).item()
        counts = dict(reads.counts)
    assert counts == {"dispatch": 1, "trainer": 1}
    assert moe_module.np is np and mx.array.item is item
    mx.array(1.0).item()
    assert reads.counts == counts


def test_the_breakdown_accounts_for_the_whole_step():
    """The parts of the breakdown add up to the measured step, whatever the timings."""
    phases = {"step": 1.0, "graph_build": 0.02, "dispatch_reads": 0.3, "grad_eval": 0.5, "update_call": 0.01,
              "update_eval": 0.05, "trainer_reads": 0.004}
    part = {"build": 0.001, "reads": 0.0, "eval": 0.1}
    parts = {name: dict(part) for name in ("decoder GEMMs", "expert GEMMs", "decoder attention", "schema encoder",
                                           "schema encoder GEMMs", "schema encoder attention",
                                           "decoder packing gathers")}
    parts["schema encoder"]["eval"] = 0.25
    parts["MoE blocks"] = {"build": 0.002, "reads": 0.003, "eval": 0.12}
    ms = step_profile.breakdown(phases, parts)
    assert sum(ms.values()) == pytest.approx(phases["step"] * 1e3)
    assert ms["MoE dispatch"] == pytest.approx((0.003 + 0.12 - 0.1) * 1e3)
    assert ms["schema encoder, other ops"] == pytest.approx(0.05 * 1e3)
