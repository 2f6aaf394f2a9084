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
import mlx.nn as nn
from mlx.utils import tree_map


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

        MLX's ``nn.average_gradients`` does the all-reduce: it packs small leaves together into
        messages of at most 32 MiB (one message per parameter would be latency-bound on small
        models) without one flat copy of the whole tree, which would double gradient memory
        (about 8 GB for configs/small.yaml). It averages; the trainer wants the sum (each rank's
        gradient is already weighted by its share of the loss tokens), hence the ``* size``,
        exact for power-of-two world sizes.
        """
        if self.size == 1:
            return grads
        mean = nn.average_gradients(grads, group=self.group)
        return tree_map(lambda g: g * self.size, mean)

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
