"""Mixed-precision training (``train.precision``): the bf16 GEMM, its gradients, training with it,
and how the precision is chosen.

Tolerances. bf16 keeps 8 significant bits: rounding an input to nearest even moves it by at
most u = 2^-8 of itself (relative), so each product a_k b_k moves by at most about 2u of
|a_k b_k|, and an element of C = A B by at most 2u * sum_k |a_k| |b_k| (for random signs about
2^-8 sqrt(K) times the typical |a| |b|). The GEMM itself sums in float32: against the exact
(float64) sum of the bf16-rounded products it is off by at most K * 2^-24 * sum_k |a_k| |b_k|.
Both bounds are checked element by element, values and gradients. Training: the first step
(same weights, only rounding differs) within 0.1% of fp32's loss, and each of 20 steps within
3% (routing and updates drift apart slowly; measured: at most 1.1% on the AVX2 machine this
was written on).
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from vantage_core import kernels
from vantage_core.config import TrainConfig, load_config
from vantage_core.errors import ConfigError
from vantage_core.model import build_model, loss
from vantage_core.model.transformer import Linear
from vantage_core.train.precision import describe, resolve_precision
from vantage_core.train.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_errors import assert_one_error_line, run_cli  # noqa: E402
from test_model import TinyTokenizer, baby_config, make_batch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
U_BF16 = 2.0 ** -8
U_FP32 = 2.0 ** -24

HAS_NATIVE_GEMM = bool(kernels.bf16_gemm_isas())
if not HAS_NATIVE_GEMM and os.environ.get("VANTAGE_REQUIRE_NATIVE") == "1":
    raise RuntimeError(f"VANTAGE_REQUIRE_NATIVE=1 but a bf16 product runs on {kernels.bf16_gemm()}")
native = pytest.mark.skipif(not HAS_NATIVE_GEMM, reason=f"a bf16 product runs on {kernels.bf16_gemm()}")

# (M, K, N): single elements, odd K (a pair with a zero partner), edges of the 4/8-row and
# 16/32-column tiles, 300 x 512 x 70 (split over threads), and k = 1100 (three blocks of k)
SHAPES = [(1, 1, 1), (3, 5, 7), (37, 64, 33), (129, 255, 100), (300, 512, 70), (67, 1100, 45)]


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> the nearest bf16 value (ties to even), as float32: the reference rounding."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
    return bits.astype(np.uint32).view(np.float32)


def operands(m: int, k: int, n: int, trans_a: bool, trans_b: bool, seed: int = 0):
    """Random A and B in the layout each flag says, and op(A), op(B) as numpy arrays."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    return a, b, (a.T if trans_a else a), (b.T if trans_b else b)


def assert_bf16_product(c: np.ndarray, op_a: np.ndarray, op_b: np.ndarray) -> None:
    """``c`` is op_a @ op_b with bf16-rounded inputs summed in float32 (both bounds above)."""
    scale = np.abs(op_a).astype(np.float64) @ np.abs(op_b).astype(np.float64)  # sum_k |a_k| |b_k|
    exact = bf16_round(op_a).astype(np.float64) @ bf16_round(op_b).astype(np.float64)
    k = op_a.shape[1]
    assert np.all(np.abs(c - exact) <= k * U_FP32 * scale + 1e-30), "not the float32 sum of bf16-rounded inputs"
    fp32 = op_a.astype(np.float64) @ op_b.astype(np.float64)
    assert np.all(np.abs(c - fp32) <= (2 * U_BF16 + k * U_FP32) * scale), "further from fp32 than bf16 allows"


@native
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (False, True), (True, False), (True, True)])
@pytest.mark.parametrize("m, k, n", SHAPES)
def test_bf16_gemm_sums_bf16_rounded_inputs_in_float32(m, k, n, trans_a, trans_b):
    """matmul_bf16 in every layout equals the exact product of the bf16-rounded inputs within
    float32 summation, and fp32's product within bf16's bound."""
    a, b, op_a, op_b = operands(m, k, n, trans_a, trans_b)
    c = np.array(kernels._native.matmul_bf16(mx.array(a), mx.array(b), trans_a, trans_b))
    assert c.shape == (m, n)
    assert_bf16_product(c, op_a, op_b)
    if k > 1:  # the inputs really were rounded
        assert not np.allclose(c, op_a @ op_b, rtol=1e-6, atol=0)


@native
@pytest.mark.parametrize("isa", kernels.bf16_gemm_isas())
def test_every_tile_kernel_computes_the_same_bits(isa):
    """Each tile kernel this CPU runs (avx512bf16 where it has AVX512-BF16, avx2, generic) gives
    bit for bit what the generic C++ one gives."""
    results = {}
    try:
        for name in (isa, "generic"):
            kernels._native.set_bf16_gemm_isa(name)
            assert kernels._native.bf16_gemm_isa() == name
            results[name] = [np.array(kernels._native.matmul_bf16(mx.array(a), mx.array(b), ta, tb))
                             for m, k, n in SHAPES for ta, tb in [(False, True), (True, False)]
                             for a, b, _, _ in [operands(m, k, n, ta, tb, seed=m)]]
    finally:
        kernels._native.set_bf16_gemm_isa("")
    for got, want in zip(results[isa], results["generic"]):
        np.testing.assert_array_equal(got, want)


@native
def test_set_bf16_gemm_isa_refuses_a_kernel_this_cpu_cannot_run():
    """Asking for an unknown tile kernel is an error that lists the ones this CPU runs."""
    with pytest.raises(ValueError, match=r"'sse9' does not run on this CPU or build; valid: .*generic"):
        kernels._native.set_bf16_gemm_isa("sse9")
    assert kernels._native.bf16_gemm_isa() == kernels.bf16_gemm_isas()[0]


@native
def test_denormals_round_to_zero_and_nan_and_infinity_carry_through():
    """As VCVTNEPS2BF16 rounds: a denormal input counts as zero; NaN and infinity propagate."""
    a = mx.array([[1e-40, 1.0, 0.0], [1.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=mx.float32)
    b = mx.array([[1e30, 0.0, 0.0], [0.0, float("nan"), 0.0], [0.0, 0.0, 0.0]], dtype=mx.float32)
    b = b.at[0, 2].add(float("inf"))
    c = np.array(kernels._native.matmul_bf16(a, b))
    assert c[0, 0] == 0.0  # 1e-40 * 1e30 would be 1e-10 without the flush
    assert np.isnan(c[0, 1]) and np.isinf(c[1, 2]) and c[2, 2] == np.inf


def bf16_grads(x: np.ndarray, w: np.ndarray, weights: np.ndarray):
    """(out, dx, dw) of sum(linear(x, w) * weights) inside matmul_precision("bf16")."""
    def objective(x, w):
        with kernels.matmul_precision("bf16"):
            return (kernels.linear(x, w) * mx.array(weights)).sum()

    with kernels.matmul_precision("bf16"):
        out = kernels.linear(mx.array(x), mx.array(w))
    dx, dw = mx.grad(objective, argnums=(0, 1))(mx.array(x), mx.array(w))
    return np.array(out), np.array(dx), np.array(dw)


@pytest.mark.parametrize("use_native", [True, False])
def test_gradients_run_through_the_bf16_gemm(use_native):
    """The vjp of linear(x, W) in bf16: dx = dC W and dW = dC^T x, each a bf16 product (the
    cotangent rounded too), within both bounds; the native GEMM and MLX's-ops fallback alike."""
    if use_native and not HAS_NATIVE_GEMM:
        pytest.skip(f"a bf16 product runs on {kernels.bf16_gemm()}")
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((2, 37, 48)).astype(np.float32), rng.standard_normal((40, 48)).astype(np.float32)
    dc = rng.standard_normal((2, 37, 40)).astype(np.float32)
    with kernels.enabled(use_native):
        out, dx, dw = bf16_grads(x, w, dc)
    x2, dc2 = x.reshape(-1, 48), dc.reshape(-1, 40)
    assert_bf16_product(out.reshape(-1, 40), x2, w.T)
    assert_bf16_product(dx.reshape(-1, 48), dc2, w)
    assert_bf16_product(dw, dc2.T, x2)


def test_outside_bf16_linear_and_matmul_are_mlx_float32_bit_for_bit():
    """With no matmul_precision("bf16") around them, Linear is mlx.nn.Linear and kernels.matmul
    is ``@``, bit for bit: precision fp32 changes nothing."""
    mx.random.seed(4)
    ours, theirs = Linear(24, 16), nn.Linear(24, 16)
    theirs.update(ours.parameters())
    x = mx.random.normal((5, 24))
    assert mx.array_equal(ours(x), theirs(x)).item()
    w = mx.random.normal((24, 8))
    assert mx.array_equal(kernels.matmul(x, w), x @ w).item()
    with kernels.matmul_precision("bf16"):
        assert not mx.array_equal(ours(x), theirs(x)).item()


def training_losses(precision: str, steps: int = 20) -> list[float]:
    """The losses of ``steps`` steps of a baby MoE model (4 layers, cross-attention to a
    transformer schema encoder) trained with ``train.precision: precision``."""
    mx.random.seed(0)
    model = build_model(baby_config(), TinyTokenizer())
    mx.eval(model.parameters())
    trainer = Trainer(model, loss, TrainConfig(steps=steps, lr=1e-2, warmup_steps=0, compile=False,
                                               precision=precision))
    return [trainer.train_step([make_batch(model, seed=step % 4)])["loss"] for step in range(steps)]


@pytest.fixture
def no_precision_env(monkeypatch):
    monkeypatch.delenv("VANTAGE_PRECISION", raising=False)


def test_training_in_bf16_tracks_fp32(no_precision_env):
    """20 steps in bf16 stay within 3% of fp32's losses (the first, before any update, within
    0.1%), and are not fp32's losses: the bf16 GEMM ran."""
    fp32, bf16 = training_losses("fp32"), training_losses("bf16")
    assert bf16 != fp32
    assert abs(bf16[0] - fp32[0]) <= 1e-3 * fp32[0]
    assert all(abs(b - f) <= 0.03 * f for b, f in zip(bf16, fp32)), list(zip(bf16, fp32))
    assert bf16[-1] < bf16[0]


def test_vantage_precision_fp32_forces_the_fp32_path_bit_for_bit(monkeypatch):
    """VANTAGE_PRECISION=fp32 makes a train.precision: bf16 run compute exactly the losses of
    train.precision: fp32."""
    monkeypatch.delenv("VANTAGE_PRECISION", raising=False)
    fp32 = training_losses("fp32", steps=8)
    monkeypatch.setenv("VANTAGE_PRECISION", "fp32")
    resolved = resolve_precision("bf16")
    assert (resolved.name, resolved.reason) == ("fp32", "VANTAGE_PRECISION=fp32 forces float32")
    assert training_losses("bf16", steps=8) == fp32


def test_a_bad_vantage_precision_is_one_clear_error(monkeypatch):
    """VANTAGE_PRECISION takes fp32 only; another value names the variable and what is valid."""
    monkeypatch.setenv("VANTAGE_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"^VANTAGE_PRECISION='bf16': the one valid value is fp32"):
        resolve_precision("auto")


def test_vantage_train_refuses_a_bad_vantage_precision_before_any_work(tmp_path, monkeypatch, capsys):
    """`vantage train` stops on a bad VANTAGE_PRECISION with one error line, before it reads data
    or writes the run folder."""
    monkeypatch.setenv("VANTAGE_PRECISION", "fp16")
    run_dir = tmp_path / "run"
    code, _, err = run_cli(["train", "--config", str(REPO / "configs" / "tiny.yaml"), "--set",
                            f"run.dir={run_dir}"], capsys)
    assert code != 0
    assert_one_error_line(err, "VANTAGE_PRECISION='fp16'", "the one valid value is fp32")
    assert "loaded" not in err and not run_dir.exists()


def cpu_flags() -> set[str]:
    """The CPU's feature flags as the kernel reports them (/proc/cpuinfo), independent of Vantage."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    return set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())


@native
def test_auto_follows_the_cpu_and_doctor_says_which_and_why(no_precision_env):
    """auto is bf16 exactly where /proc/cpuinfo lists avx512_bf16 (fp32 on an AVX2 machine), and
    the precision line of `vantage doctor` says so and why."""
    from vantage_core.cli.doctor import report

    has_bf16 = "avx512_bf16" in cpu_flags()
    resolved = resolve_precision("auto")
    assert resolved.name == ("bf16" if has_bf16 else "fp32")
    line = next(line for line in report(64) if line.startswith("precision"))
    assert line == f"precision     {describe('auto')}"
    if has_bf16:
        assert "auto -> bf16: this CPU has AVX512-BF16: the native bf16 GEMM, avx512bf16 tile kernel" in line
    else:
        assert "auto -> fp32: this CPU has no AVX512-BF16" in line
        assert "avx512bf16" not in kernels.bf16_gemm_isas()


def test_config_rejects_fp16_naming_the_field_and_the_valid_values(tmp_path):
    """train.precision: fp16 is an error at its file and line, listing auto, fp32 and bf16."""
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent("""\
        train:
          steps: 5
          precision: fp16
    """))
    with pytest.raises(ConfigError, match=rf"{path}:3: train.precision: Input should be 'auto', 'fp32' or 'bf16'"):
        load_config(path, registry=False)
    path.write_text(path.read_text().replace("fp16", "bf16"))
    assert load_config(path, registry=False).train.precision == "bf16"
