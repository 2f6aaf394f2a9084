"""A router that ignores its input: each token goes to k experts drawn at random.

Random routing is the baseline any learned router has to beat (Roller et al., 2021, "Hash
Layers for Large Sparse Models", compare against it). It balances load by construction, so it
adds no auxiliary loss.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import Routing, expert_load


class RandomRouter(nn.Module):
    """Route each token to ``k`` experts drawn uniformly at random, with equal weights."""

    def __init__(self, d_model: int, num_experts: int, *, k: int = 2):
        super().__init__()
        if not 1 <= k <= num_experts:
            raise ValueError(f"random router: k={k} must be between 1 and num_experts={num_experts}")
        self.num_experts, self.k = num_experts, k

    def __call__(self, x: mx.array) -> Routing:
        n = x.shape[0]
        scores = mx.random.uniform(shape=(n, self.num_experts))  # (N, E)
        indices = mx.stop_gradient(mx.argpartition(-scores, kth=self.k - 1, axis=-1)[:, : self.k])  # (N, k)
        weights = mx.full((n, self.k), 1.0 / self.k, dtype=x.dtype)
        probs = mx.full((n, self.num_experts), 1.0 / self.num_experts, dtype=x.dtype)
        return Routing(indices.astype(mx.int32), weights, probs, {}, expert_load(indices, self.num_experts))
