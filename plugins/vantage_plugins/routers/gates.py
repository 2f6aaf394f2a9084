"""Token-to-expert routers: top-k softmax (with Switch's balancing loss and ST-MoE's z-loss),
top-1 Switch, and DeepSeek-V3's auxiliary-loss-free router."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import ConfigError, Routing, expert_load


def _top_k(scores: mx.array, k: int) -> mx.array:
    """(N, E) -> (N, k) ids of the k largest scores, without a gradient path."""
    return mx.stop_gradient(mx.argpartition(-scores, kth=k - 1, axis=-1)[:, :k]).astype(mx.int32)


class TopKRouter(nn.Module):
    """Softmax over all experts, top-k, renormalized; Switch balancing loss and router z-loss.

    ``balance_weight`` * E * sum_i f_i * P_i (f_i: share of token-slots on expert i, P_i: its mean
    probability) and ``z_weight`` * mean(logsumexp(logits)^2) are added to the training loss.
    ``noise``: std of Gaussian jitter on the selection logits while training. ``capacity_factor``:
    drop token-slots beyond ceil(cf * N * k / E) per expert in training; None is dropless.
    With ``k=1`` the weight is the raw probability (renormalizing would make it 1 and cut the
    router's gradient).
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, balance_weight: float = 0.01,
                 z_weight: float = 1e-3, noise: float = 0.0, capacity_factor: float | None = None,
                 normalize: bool = True):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ConfigError(f"model.router.k: {k} must be between 1 and num_experts ({num_experts})")
        self.num_experts, self.k = num_experts, k
        self.balance_weight, self.z_weight = balance_weight, z_weight
        self.noise, self.capacity_factor, self.normalize = noise, capacity_factor, normalize
        self.gate = nn.Linear(d_model, num_experts, bias=False)

    def __call__(self, x: mx.array) -> Routing:
        logits = self.gate(x).astype(mx.float32)  # (N, E)
        probs = mx.softmax(logits, axis=-1)
        select = logits
        if self.training and self.noise > 0:
            select = logits + self.noise * mx.random.normal(logits.shape)
        indices = _top_k(select, self.k)  # (N, k)
        weights = mx.take_along_axis(probs, indices, axis=-1)  # (N, k)
        if self.normalize and self.k > 1:
            weights = weights / weights.sum(axis=-1, keepdims=True)
        load = expert_load(indices, self.num_experts)  # f_i
        aux = {}
        if self.balance_weight:
            aux["balance"] = self.balance_weight * self.num_experts * (load * probs.mean(axis=0)).sum()
        if self.z_weight:
            aux["z"] = self.z_weight * mx.square(mx.logsumexp(logits, axis=-1)).mean()
        return Routing(indices, weights, probs, aux, load, self.capacity_factor)


class SwitchRouter(TopKRouter):
    """Switch Transformer: top-1 routing, output scaled by the chosen expert's probability."""

    def __init__(self, d_model: int, num_experts: int, balance_weight: float = 0.01,
                 z_weight: float = 1e-3, noise: float = 0.0, capacity_factor: float | None = None):
        super().__init__(d_model, num_experts, k=1, balance_weight=balance_weight, z_weight=z_weight,
                         noise=noise, capacity_factor=capacity_factor, normalize=False)


class AuxFreeRouter(nn.Module):
    """DeepSeek-V3's auxiliary-loss-free balancing: sigmoid affinities, top-k on affinity + bias,
    combine weights from the affinities alone (normalized over the chosen k).

    The per-expert ``bias`` is frozen (no gradient, not updated by the optimizer) and is nudged
    outside the gradient: the trainer calls :meth:`update_bias` (or ``model.update_routers``)
    after each step with the observed load: ``bias += bias_speed * sign(mean_load - load)``.
    ``balance_weight`` optionally adds DeepSeek-V3's small sequence-free balance loss (off by
    default: the bias is the balancing mechanism).
    """

    def __init__(self, d_model: int, num_experts: int, k: int = 2, bias_speed: float = 1e-3,
                 balance_weight: float = 0.0, z_weight: float = 0.0):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ConfigError(f"model.router.k: {k} must be between 1 and num_experts ({num_experts})")
        self.num_experts, self.k, self.bias_speed = num_experts, k, bias_speed
        self.balance_weight, self.z_weight = balance_weight, z_weight
        self.capacity_factor = None
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        self.bias = mx.zeros((num_experts,))
        self.freeze(keys=["bias"], recurse=False)

    def __call__(self, x: mx.array) -> Routing:
        logits = self.gate(x).astype(mx.float32)  # (N, E)
        scores = mx.sigmoid(logits)
        indices = _top_k(scores + mx.stop_gradient(self.bias), self.k)
        weights = mx.take_along_axis(scores, indices, axis=-1)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        load = expert_load(indices, self.num_experts)
        aux = {}
        if self.balance_weight:
            probs = scores / scores.sum(axis=-1, keepdims=True)
            aux["balance"] = self.balance_weight * self.num_experts * (load * probs.mean(axis=0)).sum()
        if self.z_weight:
            aux["z"] = self.z_weight * mx.square(mx.logsumexp(logits, axis=-1)).mean()
        return Routing(indices, weights, scores, aux, load, None)

    def update_bias(self, load: mx.array) -> None:
        """Raise the bias of under-loaded experts and lower it for over-loaded ones."""
        load = mx.stop_gradient(mx.array(load, dtype=mx.float32))
        self.bias = self.bias + self.bias_speed * mx.sign(load.mean() - load)
