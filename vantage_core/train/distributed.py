"""Data parallelism over processes and machines with MLX's own ``mx.distributed``.

``mlx.launch -n 2 --backend ring vantage train ...`` starts one process per rank; each reads its
own shard of every global batch, gradients are summed across ranks (weighted by each rank's
share of the batch's loss tokens, so that 2 processes compute exactly what 1 process computes on
the same global batch), and only rank 0 writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten


@dataclass
class World:
    """This process's place among the data-parallel ranks."""

    group: mx.distributed.Group | None
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group) if self.size > 1 else x

    def sum_grads(self, grads):
        """Sum a gradient tree across ranks (identity with one process).

        The leaves travel as one flat buffer: one ring all-reduce per step instead of one per
        parameter, whose per-message latency dominates on small models.
        """
        if self.size == 1:
            return grads
        flat = tree_flatten(grads)
        buffer = mx.concatenate([g.reshape(-1) for _, g in flat])
        buffer = mx.distributed.all_sum(buffer, group=self.group)
        out, offset = [], 0
        for key, g in flat:
            out.append((key, buffer[offset:offset + g.size].reshape(g.shape)))
            offset += g.size
        return tree_unflatten(out)

    def sum_scalars(self, values: list[mx.array]) -> list[mx.array]:
        """Sum several small arrays across ranks in one message."""
        if self.size == 1:
            return values
        buffer = mx.distributed.all_sum(mx.concatenate([v.reshape(-1).astype(mx.float32) for v in values]),
                                        group=self.group)
        out, offset = [], 0
        for v in values:
            out.append(buffer[offset:offset + v.size].reshape(v.shape))
            offset += v.size
        return out

    def barrier(self) -> None:
        """Wait for every rank (an all_sum of a scalar)."""
        if self.size > 1:
            mx.eval(mx.distributed.all_sum(mx.array(1.0), group=self.group))


_world: World | None = None


def init_world(backend: str = "any") -> World:
    """Join the ranks started by ``mlx.launch`` (a single rank when started directly)."""
    global _world
    if _world is None:
        group = mx.distributed.init(strict=False, backend=backend)
        _world = World(group, group.rank(), group.size())
    return _world
