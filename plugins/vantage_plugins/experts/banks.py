"""Expert banks: every expert's weights of one MoE layer, applied one GEMM per expert block.

Each expert keeps its own arrays (a list, not one (E, ...) tensor): slicing a stacked tensor
per expert would make each expert's backward pass write a full-size zero gradient.
"""

from __future__ import annotations

import math
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import kernels


def _uniform(shape: tuple[int, ...], fan_in: int) -> mx.array:
    bound = 1.0 / math.sqrt(fan_in)
    return mx.random.uniform(-bound, bound, shape)


def _blocks(x: mx.array, counts: Sequence[int]) -> list[tuple[int, mx.array]]:
    """Split the grouped rows into (expert, block) pairs, skipping empty experts."""
    bounds, total = [], 0
    for c in counts[:-1]:
        total += c
        bounds.append(total)
    parts = mx.split(x, bounds, axis=0) if bounds else [x]
    return [(e, p) for e, (p, c) in enumerate(zip(parts, counts)) if c > 0]


def _quantize(w: mx.array, group_size: int, bits: int) -> dict[str, mx.array]:
    """(in, out) weight -> MLX's quantized (out, in) layout, groups along the input width."""
    q, scales, biases = mx.quantize(w.T, group_size=group_size, bits=bits)
    return {"weight": q, "scales": scales, "biases": biases}


def _dequantize(w: dict[str, mx.array], group_size: int, bits: int) -> mx.array:
    """MLX's quantized (out, in) layout -> the (in, out) float weight ``quantized_matmul`` applies."""
    float_w = mx.dequantize(w["weight"], w["scales"], w["biases"], group_size=group_size, bits=bits,
                            dtype=w["scales"].dtype)
    return mx.contiguous(float_w.T)  # row-major (in, out), as a float checkpoint loads it


class QuantizableBank(nn.Module):
    """Weight lists that ``mlx.nn.quantize`` can turn into MLX's quantized format (inference)."""

    group_size: int | None = None
    bits: int | None = None

    def mm(self, x: mx.array, w) -> mx.array:
        """``x @ w`` for a float (in, out) weight (in ``train.precision``: ``kernels.matmul``) or a
        quantized one."""
        if isinstance(w, dict):
            return mx.quantized_matmul(x, w["weight"], w["scales"], w["biases"], transpose=True,
                                       group_size=self.group_size, bits=self.bits)
        return kernels.matmul(x, w)

    def size_of(self, w) -> int:
        """Parameter count of a weight; for a quantized one, of the float weight it stands for."""
        if isinstance(w, dict):  # (out, in * bits / 32) uint32
            return w["weight"].shape[0] * w["weight"].shape[1] * 32 // self.bits
        return w.size

    def quantizable_widths(self) -> list[int]:
        """The input widths of every weight (each must be a multiple of the group size)."""
        return [w.shape[0] for name, w in self._float_weights()]

    def _float_weights(self):
        for name, value in self.items():
            for w in value if isinstance(value, list) else [value]:
                if isinstance(w, mx.array) and w.ndim == 2:
                    yield name, w

    def to_quantized(self, group_size: int = 64, bits: int = 4, mode: str = "affine",
                     **_: object) -> "QuantizableBank":
        """Quantize every expert weight in place (affine mode, MLX's default)."""
        if mode != "affine":
            raise ValueError(f"expert banks quantize in 'affine' mode only, not {mode!r}")
        for name, value in list(self.items()):
            if isinstance(value, list):
                self[name] = [_quantize(w, group_size, bits) for w in value]
            elif isinstance(value, mx.array) and value.ndim == 2:
                self[name] = _quantize(value, group_size, bits)
        self.group_size, self.bits = group_size, bits
        self.freeze()
        return self

    def to_float(self) -> "QuantizableBank":
        """Undo :meth:`to_quantized` in place: float weights equal to what the quantized ones apply."""
        for name, value in list(self.items()):
            if isinstance(value, list):
                self[name] = [_dequantize(w, self.group_size, self.bits) if isinstance(w, dict) else w
                              for w in value]
            elif isinstance(value, dict) and "scales" in value:
                self[name] = _dequantize(value, self.group_size, self.bits)
        self.group_size, self.bits = None, None
        self.unfreeze()
        return self


class SwiGLUExperts(QuantizableBank):
    """SwiGLU experts: ``down(silu(x W_gate) * x W_up)``, gate and up fused in one matmul."""

    def __init__(self, d_model: int, hidden: int, num_experts: int):
        super().__init__()
        self.num_experts, self.hidden = num_experts, hidden
        self.w_in = [_uniform((d_model, 2 * hidden), d_model) for _ in range(num_experts)]  # [gate | up]
        self.w_out = [_uniform((hidden, d_model), hidden) for _ in range(num_experts)]

    def expert(self, e: int, x: mx.array) -> mx.array:
        return self.mm(kernels.swiglu(self.mm(x, self.w_in[e])), self.w_out[e])  # (M_e, 2h) -> (M_e, h) -> (M_e, d)

    def __call__(self, x: mx.array, counts: Sequence[int]) -> mx.array:
        outs = [self.expert(e, block) for e, block in _blocks(x, counts)]
        return mx.concatenate(outs, axis=0) if outs else mx.zeros_like(x)

    def shared(self, x: mx.array) -> mx.array | None:
        return None

    def routed_size(self) -> int:
        return sum(self.size_of(w) for w in self.w_in) + sum(self.size_of(w) for w in self.w_out)


class GeluExperts(SwiGLUExperts):
    """Two-matrix GELU MLP experts: ``down(gelu(x W_in))`` (tanh approximation)."""

    def __init__(self, d_model: int, hidden: int, num_experts: int):
        nn.Module.__init__(self)
        self.num_experts, self.hidden = num_experts, hidden
        self.w_in = [_uniform((d_model, hidden), d_model) for _ in range(num_experts)]
        self.w_out = [_uniform((hidden, d_model), hidden) for _ in range(num_experts)]

    def expert(self, e: int, x: mx.array) -> mx.array:
        return self.mm(nn.gelu_approx(self.mm(x, self.w_in[e])), self.w_out[e])


class SharedSwiGLUExperts(SwiGLUExperts):
    """Routed SwiGLU experts plus always-on shared experts (DeepSeekMoE), one fused SwiGLU of
    ``num_shared * (shared_hidden or hidden)`` units applied to every token."""

    def __init__(self, d_model: int, hidden: int, num_experts: int, num_shared: int = 1,
                 shared_hidden: int | None = None):
        super().__init__(d_model, hidden, num_experts)
        width = num_shared * (shared_hidden or hidden)
        self.shared_in = _uniform((d_model, 2 * width), d_model)
        self.shared_out = _uniform((width, d_model), width)

    def shared(self, x: mx.array) -> mx.array:
        return self.mm(kernels.swiglu(self.mm(x, self.shared_in)), self.shared_out)

