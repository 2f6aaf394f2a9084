"""The sparse Mixture-of-Experts block: route, group token-slots by expert, one GEMM per expert.

The router picks ``k`` experts per token. Dispatch sorts the ``N * k`` token-slots by expert
on the host (one sync for the indices), gathers the rows into contiguous per-expert blocks,
lets the :class:`ExpertBank` run one matmul per block, and sums each token's rows back with its
combine weights (:func:`vantage_core.kernels.moe_combine`). Both gathers are permutations, so
their backward passes are gathers too (no scatter-add). Gradients reach the router only through the combine weights;
the indices carry ``stop_gradient``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from vantage_core import kernels


@dataclass
class Routing:
    """What a router decided for ``N`` tokens."""

    indices: mx.array  # (N, k) int32 expert ids, stop_gradient
    weights: mx.array  # (N, k) combine weights (the router's gradient path)
    probs: mx.array  # (N, E) router probabilities (or scores)
    aux_losses: dict[str, mx.array] = field(default_factory=dict)  # already weighted, e.g. {"balance", "z"}
    load: mx.array | None = None  # (E,) fraction of token-slots sent to each expert (telemetry)
    capacity_factor: float | None = None  # None: dropless


@runtime_checkable
class Router(Protocol):
    """``factory(d_model, num_experts, **params)``; ``__call__(x (N, d)) -> Routing``."""

    num_experts: int
    k: int

    def __call__(self, x: mx.array) -> Routing: ...


@runtime_checkable
class ExpertBank(Protocol):
    """The weights of all experts of one MoE layer.

    ``factory(d_model, hidden, num_experts, **params)``.
    """

    num_experts: int

    def __call__(self, x: mx.array, counts: Sequence[int]) -> mx.array:
        """``x`` (M, d): rows grouped by expert, ``counts[e]`` rows for expert ``e``, in order -> (M, d)."""

    def shared(self, x: mx.array) -> mx.array | None:
        """Always-on experts applied to every token (N, d) -> (N, d), or None when there are none."""

    def routed_size(self) -> int:
        """How many of the bank's parameters belong to routed experts (a token uses k/E of them)."""


def expert_load(indices: mx.array, num_experts: int) -> mx.array:
    """(N, k) expert ids -> (E,) fraction of token-slots per expert (no gradient)."""
    one_hot = indices.reshape(-1, 1) == mx.arange(num_experts)  # (N*k, E)
    return mx.stop_gradient(one_hot.astype(mx.float32).mean(axis=0))


# --------------------------------------------------------------------------- permutation gathers

@mx.custom_function
def dispatch_rows(x: mx.array, src: mx.array, inv: mx.array) -> mx.array:
    """x (N, d) -> x[src] (M, d); ``inv`` (N, k): the row of each token-slot (M for a dropped one)."""
    return x[src]


@dispatch_rows.vjp
def _dispatch_rows_vjp(primals, cotangent, output):
    x, src, inv = primals
    padded = mx.concatenate([cotangent, mx.zeros((1, cotangent.shape[-1]), cotangent.dtype)])
    return padded[inv].sum(axis=1), mx.zeros_like(src), mx.zeros_like(inv)  # (N, d): each token's slots summed


@dataclass
class DispatchPlan:
    """Host-side bookkeeping of one dispatch: which rows go where."""

    src_token: mx.array  # (M,) token of each grouped row
    slot_of_row: mx.array  # (M,) token-slot (n * k + j) of each grouped row
    inv: mx.array  # (N, k) grouped row of each token-slot; M marks a dropped slot
    counts: list[int]  # rows per expert
    dropped: int


def plan_dispatch(indices: np.ndarray, num_experts: int, capacity_factor: float | None = None) -> DispatchPlan:
    """Sort the token-slots of ``indices`` (N, k) by expert; drop beyond capacity if one is set."""
    n, k = indices.shape
    flat = indices.reshape(-1)
    order = np.argsort(flat, kind="stable")  # (N*k,) slots grouped by expert, token order kept
    counts = np.bincount(flat, minlength=num_experts)
    dropped = 0
    if capacity_factor is not None:
        capacity = max(1, math.ceil(capacity_factor * n * k / num_experts))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        rank = np.arange(order.size) - np.repeat(starts, counts)  # position inside the expert's block
        keep = rank < capacity
        dropped = int((~keep).sum())
        order = order[keep]
        counts = np.minimum(counts, capacity)
    inv = np.full(n * k, order.size, dtype=np.int32)
    inv[order] = np.arange(order.size, dtype=np.int32)
    return DispatchPlan(
        src_token=mx.array((order // k).astype(np.int32)),
        slot_of_row=mx.array(order.astype(np.int32)),
        inv=mx.array(inv.reshape(n, k)),
        counts=counts.tolist(),
        dropped=dropped,
    )


class MoEBlock(nn.Module):
    """Route each token to ``k`` experts and sum their outputs with the combine weights."""

    def __init__(self, router: nn.Module, experts: nn.Module):
        super().__init__()
        self.router = router
        self.experts = experts

    def __call__(self, x: mx.array) -> tuple[mx.array, Routing]:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, d)
        routing = self.router(x)
        plan = plan_dispatch(np.array(routing.indices), self.experts.num_experts,
                             routing.capacity_factor if self.training else None)
        grouped = dispatch_rows(x, plan.src_token, plan.inv)  # (M, d)
        out = self.experts(grouped, plan.counts)  # (M, d)
        y = kernels.moe_combine(out, routing.weights.astype(out.dtype), plan.inv, plan.slot_of_row)  # (N, d)
        shared = self.experts.shared(x)
        if shared is not None:
            y = y + shared
        return y.reshape(shape), routing


# ---------------------------------------------------------------------------- routing capture

class RouterTap:
    """Stands in front of a router, passing every call through and keeping the decisions."""

    def __init__(self, router: Any):
        self.router = router
        self.calls: list[Any] = []

    def __call__(self, x):
        routing = self.router(x)
        self.calls.append(routing)
        return routing

    def __getattr__(self, name: str) -> Any:
        return getattr(self.router, name)


def moe_blocks(model: Any) -> list[Any]:
    """The model's MoE blocks, in layer order."""
    return [layer.ffn for layer in getattr(model, "layers", []) if isinstance(getattr(layer, "ffn", None), MoEBlock)]


@contextlib.contextmanager
def capture_routing(model: Any) -> Iterator[list[RouterTap]]:
    """Within the block, every MoE layer's router decisions are kept in ``tap.calls`` (one tap
    per MoE layer, in order). The router modules and parameters are untouched: an instance
    attribute shadows each block's ``router`` child and is removed on exit."""
    blocks = moe_blocks(model)
    shadowed = [b.__dict__.get("router") for b in blocks]  # another tap already in place (nested captures)
    taps = [RouterTap(b.router) for b in blocks]
    for block, tap in zip(blocks, taps):
        object.__setattr__(block, "router", tap)
    try:
        yield taps
    finally:
        for block, previous in zip(blocks, shadowed):
            if previous is None:
                object.__delattr__(block, "router")
            else:
                object.__setattr__(block, "router", previous)
