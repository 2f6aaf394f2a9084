"""Fused kernels for the hot elementwise work, native on the CPU, MLX's own ops elsewhere.

MLX's CPU kernels for exp, silu, softmax and log-softmax run on one thread without a vectorized
exponential: on a Linux CPU they, not the matmuls, set the pace of training. The C++ extension
built from ``csrc/`` (``vantage_core.kernels._native``) adds MLX primitives with vectorized,
multi-threaded CPU kernels and native backward passes:

    swiglu(gate_up)              (..., 2H) [gate | up] -> (..., H) silu(gate) * up
    rms_norm(x, weight, eps)     x * rsqrt(mean(x^2) + eps) * weight
    cross_entropy(logits, t)     (..., C), (...) -> (...) logsumexp(logits) - logits[t]
    softmax(x, causal=False)     over the last axis; causal: keys after each query get 0
    dropout(x, p)                x * keep / (1 - p): the mask a hash of (a seed from MLX's
                                 generator, the element's index), recomputed by the backward pass
    attention(q, k, v, scale)    softmax(scale q k^T + bias) v per (batch, head), reading
                                 transposed views in place; differentiable in the bias too
    adamw(params, grads, ...)    one AdamW step over many tensors in one threaded call
    moe_combine(rows, w, inv)    each token's expert outputs summed with its combine weights
    matmul(x, w), linear(x, W)   x @ w and x @ W^T (+ bias); inside ``matmul_precision("bf16")``
                                 with bf16-rounded inputs and float32 sums (mixed precision)

Each function runs the native primitive when the extension loaded, the default device is the
CPU, the inputs are float32 and native kernels are enabled; otherwise the same computation in
MLX ops (Metal and CUDA keep MLX's kernels). ``VANTAGE_NATIVE_KERNELS=0`` turns them off for a
process; :func:`enabled` switches them inside one (benchmarks compare both paths in one run).
The kernels split rows over ``VANTAGE_KERNEL_THREADS`` threads, else ``OPENBLAS_NUM_THREADS``, else
the cores (up to 8).
"""

from __future__ import annotations

import contextlib
import os
from contextvars import ContextVar
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn


@dataclass(frozen=True)
class KernelStatus:
    loaded: bool  # the extension imported and passed its self-check
    reason: str  # one sentence a person can read


def _threads_from_env() -> int | None:
    """Threads for the kernels: ``VANTAGE_KERNEL_THREADS``, else what OpenBLAS is told
    (``OPENBLAS_NUM_THREADS``: processes sharing a machine split its cores), else the cores."""
    for name in ("VANTAGE_KERNEL_THREADS", "OPENBLAS_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value))
            except ValueError:
                raise ValueError(f"{name}={value!r}: expected a whole number of threads") from None
    return None


def _load():
    """The extension module and why (not), checked against the MLX that is running."""
    if os.environ.get("VANTAGE_NATIVE_KERNELS", "").strip().lower() in ("0", "false", "off", "no"):
        return None, "off: VANTAGE_NATIVE_KERNELS=0 (MLX's own ops)"
    try:
        from vantage_core.kernels import _native
    except ImportError as exc:
        return None, f"not built ({exc}); MLX's own ops are used. Reinstall Vantage with a C++ compiler and CMake"
    if _native.mlx_version != mx.__version__:
        return None, (f"built against MLX {_native.mlx_version} but MLX {mx.__version__} is running; "
                      "MLX's own ops are used. Reinstall Vantage to rebuild")
    try:
        threads, note = _threads_from_env(), ""
    except ValueError as exc:
        threads, note = None, f"; {exc}, so the cores are used"
    if threads:
        _native.set_num_threads(threads)
    try:
        with mx.stream(mx.cpu):
            mx.eval(_native.softmax(mx.zeros((1, 2))))
    except (TypeError, RuntimeError) as exc:  # nanobind ABI of another MLX build
        return None, f"does not run with this MLX ({exc}); MLX's own ops are used"
    n = _native.num_threads()
    return _native, f"active on the CPU ({_native.isa()}, {n} thread{'s' if n != 1 else ''}){note}"


_native, _reason = _load()
_enabled = True


def status() -> KernelStatus:
    """Whether the native kernels are in use, in a sentence (``vantage doctor`` prints it)."""
    if _native is not None and not _enabled:
        return KernelStatus(True, "loaded but switched off in this process (MLX's own ops)")
    return KernelStatus(_native is not None, _reason)


@contextlib.contextmanager
def enabled(on: bool):
    """Use (or not) the native kernels inside the ``with`` block."""
    global _enabled
    before, _enabled = _enabled, on
    try:
        yield
    finally:
        _enabled = before


def _native_for(*arrays: mx.array) -> bool:
    return (_native is not None and _enabled and mx.default_device() == mx.cpu
            and all(a.dtype == mx.float32 for a in arrays))


def swiglu(gate_up: mx.array) -> mx.array:
    """(..., 2H) [gate | up] -> (..., H) ``silu(gate) * up``."""
    if _native_for(gate_up):
        return _native.swiglu(gate_up)
    gate, up = mx.split(gate_up, 2, axis=-1)
    return nn.silu(gate) * up


def rms_norm(x: mx.array, weight: mx.array, eps: float) -> mx.array:
    """``x * rsqrt(mean(x^2, -1) + eps) * weight``."""
    if _native_for(x, weight):
        return _native.rms_norm(x, weight, eps)
    return mx.fast.rms_norm(x, weight, eps)


def cross_entropy(logits: mx.array, targets: mx.array) -> mx.array:
    """(..., C) logits and (...) integer targets in [0, C) -> (...) per-position cross-entropy."""
    if _native_for(logits):
        return _native.cross_entropy(logits, targets)
    if logits.size == 0:  # MLX's logsumexp refuses empty arrays
        return mx.zeros(logits.shape[:-1])
    return nn.losses.cross_entropy(logits, targets, reduction="none")


def softmax(x: mx.array, causal: bool = False) -> mx.array:
    """Softmax over the last axis; ``causal``: over the last two axes (Tq, Tk), query i sees
    keys ``j <= i + Tk - Tq`` only (the queries are the last Tq positions)."""
    if _native_for(x):
        return _native.softmax(x, causal)
    if causal:
        Tq, Tk = x.shape[-2:]
        seen = mx.arange(Tk)[None, :] <= mx.arange(Tq)[:, None] + (Tk - Tq)
        x = mx.where(seen, x, -mx.inf)
    return mx.softmax(x, axis=-1, precise=True)


def dropout(x: mx.array, p: float) -> mx.array:
    """Zero each element with probability ``p`` and scale the rest by ``1 / (1 - p)``, as
    ``mlx.nn.Dropout`` in training. The randomness comes from MLX's generator (one draw per
    call), so ``mx.random.seed`` makes it repeatable either way; the two paths draw different
    masks."""
    if p == 0 or x.size == 0:
        return x
    if _native_for(x):
        return _native.dropout(x, mx.random.randint(-2**31, 2**31 - 1, ()), p)  # the int32 range as a uint32 seed
    keep = mx.random.bernoulli(1 - p, x.shape)
    return (keep * x) * (1 / (1 - p))


@dataclass(frozen=True)
class AdamWSettings:
    """The constants of an AdamW step (as ``mlx.optimizers.AdamW`` names them)."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01


def adamw(params: list[mx.array], grads: list[mx.array], m: list[mx.array], v: list[mx.array], lr: mx.array,
          scale: mx.array, settings: AdamWSettings):
    """One AdamW step (``mlx.optimizers.AdamW`` without bias correction) of every tensor, the
    gradients multiplied by ``scale`` first -> (new params, new m, new v), three lists."""
    (b1, b2), eps, weight_decay = settings.betas, settings.eps, settings.weight_decay
    if params and _native_for(*params, *grads, *m, *v):
        out = _native.adamw(params, grads, m, v, lr, scale, b1, b2, eps, weight_decay)
        n = len(params)
        return out[:n], out[n:2 * n], out[2 * n:]
    new_p, new_m, new_v = [], [], []
    for p, g, mi, vi in zip(params, grads, m, v):
        g = g * scale.astype(g.dtype)
        mi = b1 * mi + (1 - b1) * g
        vi = b2 * vi + (1 - b2) * mx.square(g)
        lr_ = lr.astype(g.dtype)
        new_p.append(p * (1 - lr_ * weight_decay) - lr_ * mi / (mx.sqrt(vi) + eps))
        new_m.append(mi)
        new_v.append(vi)
    return new_p, new_m, new_v


@mx.custom_function
def collect_rows(y: mx.array, slot_of_row: mx.array, inv: mx.array) -> mx.array:
    """y (M, d) grouped by expert -> (N, k, d) back in token-slot order (zeros for dropped slots)."""
    padded = mx.concatenate([y, mx.zeros((1, y.shape[-1]), y.dtype)])
    return padded[inv]


@collect_rows.vjp
def _collect_rows_vjp(primals, cotangent, output):
    y, slot_of_row, inv = primals
    flat = cotangent.reshape(-1, cotangent.shape[-1])  # (N*k, d): a permutation, so a gather back
    return flat[slot_of_row], mx.zeros_like(slot_of_row), mx.zeros_like(inv)


def moe_combine(rows: mx.array, weights: mx.array, inv: mx.array, slot_of_row: mx.array) -> mx.array:
    """The MoE combine: ``rows`` (M, d) grouped by expert, ``weights`` (N, k), ``inv`` (N, k) the
    row of each token-slot (M: dropped), ``slot_of_row`` (M,) its inverse -> (N, d), each token's
    rows summed with its weights. Native: one pass, no (N, k, d) intermediate."""
    if _native_for(rows, weights):
        return _native.moe_combine(rows, weights, inv)
    per_slot = collect_rows(rows, slot_of_row, inv)  # (N, k, d)
    return (per_slot * weights[..., None]).sum(axis=1)


def attention(q: mx.array, k: mx.array, v: mx.array, scale: float, causal: bool = False,
              bias: mx.array | None = None) -> mx.array:
    """(B, H, Tq, hd) queries, (B, H_kv, Tk, hd) keys and values -> (B, H, Tq, hd); ``bias``: an
    additive mask or score term broadcastable to (B, H, Tq, Tk) (differentiable). With native
    kernels: one fused primitive that reads transposed views of the projections in place and
    writes (B, Tq, H, hd), returned as a (B, H, Tq, hd) view, so neither side of attention
    copies a transpose; else MLX's fused attention."""
    if bias is not None and causal:
        raise ValueError("attention: pass either causal or bias")
    if not _native_for(q, k, v) or (bias is not None and bias.dtype != mx.float32):
        mask = bias if bias is not None else ("causal" if causal else None)
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
    return _native.attention(q, k, v, scale, causal, bias).transpose(0, 2, 1, 3)


# ------------------------------------------------------------------------------ mixed precision

MATMUL_PRECISIONS = ("fp32", "bf16")
_matmul_precision: ContextVar[str] = ContextVar("vantage_matmul_precision", default="fp32")


@contextlib.contextmanager
def matmul_precision(name: str):
    """Inside the block (this thread, this context), :func:`matmul` and :func:`linear` run in
    ``name``: ``fp32`` (MLX's float32 matmul) or ``bf16`` (inputs rounded to bfloat16, products
    summed in float32, in the backward pass too)."""
    if name not in MATMUL_PRECISIONS:
        raise ValueError(f"matmul precision {name!r}; valid: {', '.join(MATMUL_PRECISIONS)}")
    token = _matmul_precision.set(name)
    try:
        yield
    finally:
        _matmul_precision.reset(token)


def _has_bf16_gemm() -> bool:
    # an extension built from sources older than the bf16 GEMM still serves the other kernels
    return _native is not None and hasattr(_native, "matmul_bf16")


def bf16_gemm() -> str:
    """What a bf16 product runs on here, in words: the native tile kernel or MLX's ops."""
    ops = "MLX's ops (bf16-rounded inputs, float32 matmul)"
    if _native is None:
        return f"{ops}: the native kernels are not loaded"
    if not _has_bf16_gemm():
        return f"{ops}: the native extension was built before the bf16 GEMM; reinstall Vantage to rebuild it"
    if not _enabled:
        return f"{ops}: the native kernels are switched off"
    return f"the native bf16 GEMM, {_native.bf16_gemm_isa()} tile kernel"


def bf16_gemm_isas() -> list[str]:
    """The native bf16 GEMM's tile kernels this CPU and build run, best first (empty without it):
    ``avx512bf16`` (VDPBF16PS), ``avx2``, ``generic``; they compute the same values."""
    return list(_native.bf16_gemm_isas()) if _has_bf16_gemm() else []


def _bf16_values(x: mx.array) -> mx.array:
    return x.astype(mx.bfloat16).astype(mx.float32)


@mx.custom_function
def _bf16_matmul_ops(a: mx.array, b: mx.array) -> mx.array:
    """(M, K) @ (K, N) with bf16-rounded inputs, in MLX's ops (the native GEMM's fallback)."""
    return _bf16_values(a) @ _bf16_values(b)


@_bf16_matmul_ops.vjp
def _bf16_matmul_ops_vjp(primals, cotangent, output):
    a, b = primals
    g = _bf16_values(cotangent)
    return g @ _bf16_values(b).T, _bf16_values(a).T @ g


def _bf16_product(x: mx.array, w: mx.array, transpose_w: bool) -> mx.array:
    """(..., K) times (K, N) (``transpose_w``: (N, K), used transposed) -> (..., N), bf16 inputs."""
    rows = x.reshape(-1, x.shape[-1])
    if _has_bf16_gemm() and _native_for(rows, w):
        out = _native.matmul_bf16(rows, w, False, transpose_w)
    else:
        out = _bf16_matmul_ops(rows, w.T if transpose_w else w)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def _bf16_wanted(x: mx.array, w: mx.array) -> bool:
    # a model kept in another dtype (model.dtype) already chose its precision
    return _matmul_precision.get() == "bf16" and x.dtype == mx.float32 and w.dtype == mx.float32


def matmul(x: mx.array, w: mx.array) -> mx.array:
    """(..., K) @ (K, N) -> (..., N): ``x @ w``, or in bf16 inside ``matmul_precision("bf16")``."""
    if not _bf16_wanted(x, w):
        return x @ w
    return _bf16_product(x, w, transpose_w=False)


def linear(x: mx.array, weight: mx.array, bias: mx.array | None = None) -> mx.array:
    """(..., K) times a (N, K) weight, transposed, plus ``bias`` -> (..., N), as ``mlx.nn.Linear``
    computes it; in bf16 inside ``matmul_precision("bf16")`` (the bias added in float32)."""
    if not _bf16_wanted(x, weight):
        return mx.addmm(bias, x, weight.T) if bias is not None else x @ weight.T
    out = _bf16_product(x, weight, transpose_w=True)
    return out + bias if bias is not None else out
