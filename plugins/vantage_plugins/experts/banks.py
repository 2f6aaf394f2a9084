"""Expert banks: every expert's weights of one MoE layer, applied one GEMM per expert block.

Each expert keeps its own arrays (a list, not one (E, ...) tensor): slicing a stacked tensor
per expert would make each expert's backward pass write a full-size zero gradient.
"""

from __future__ import annotations

import math
from typing import Sequence

import mlx.core as mx
import mlx.nn as nn


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


class SwiGLUExperts(nn.Module):
    """SwiGLU experts: ``down(silu(x W_gate) * x W_up)``, gate and up fused in one matmul."""

    def __init__(self, d_model: int, hidden: int, num_experts: int):
        super().__init__()
        self.num_experts, self.hidden = num_experts, hidden
        self.w_in = [_uniform((d_model, 2 * hidden), d_model) for _ in range(num_experts)]  # [gate | up]
        self.w_out = [_uniform((hidden, d_model), hidden) for _ in range(num_experts)]

    def expert(self, e: int, x: mx.array) -> mx.array:
        gate, up = mx.split(x @ self.w_in[e], 2, axis=-1)  # (M_e, h) each
        return (nn.silu(gate) * up) @ self.w_out[e]

    def __call__(self, x: mx.array, counts: Sequence[int]) -> mx.array:
        outs = [self.expert(e, block) for e, block in _blocks(x, counts)]
        return mx.concatenate(outs, axis=0) if outs else mx.zeros_like(x)

    def shared(self, x: mx.array) -> mx.array | None:
        return None

    def routed_size(self) -> int:
        return sum(w.size for w in self.w_in) + sum(w.size for w in self.w_out)


class GeluExperts(SwiGLUExperts):
    """Two-matrix GELU MLP experts: ``down(gelu(x W_in))`` (tanh approximation)."""

    def __init__(self, d_model: int, hidden: int, num_experts: int):
        nn.Module.__init__(self)
        self.num_experts, self.hidden = num_experts, hidden
        self.w_in = [_uniform((d_model, hidden), d_model) for _ in range(num_experts)]
        self.w_out = [_uniform((hidden, d_model), hidden) for _ in range(num_experts)]

    def expert(self, e: int, x: mx.array) -> mx.array:
        return nn.gelu_approx(x @ self.w_in[e]) @ self.w_out[e]


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
        gate, up = mx.split(x @ self.shared_in, 2, axis=-1)
        return (nn.silu(gate) * up) @ self.shared_out
