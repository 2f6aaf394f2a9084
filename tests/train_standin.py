"""A stand-in model, loss and batch stream for the trainer's tests (and the 2-process script):
small enough to train in milliseconds, with the same interface as the real ones."""

from __future__ import annotations

import numpy as np

import vantage_core  # noqa: F401
import mlx.core as mx
import mlx.nn as nn


class TinyLM(nn.Module):
    def __init__(self, vocab: int = 32, d: int = 16, experts: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.router = nn.Linear(d, experts)
        self.out = nn.Linear(d, vocab)

    def __call__(self, tokens):
        h = nn.relu(self.embed(tokens))  # (B, T, d)
        return self.out(h), mx.softmax(self.router(h), axis=-1)  # (B, T, V), (B, T, E)


def loss_fn(model, arrays):
    logits, probs = model(arrays["tokens"])
    mask = arrays["loss_mask"].astype(mx.float32)
    ce = (nn.losses.cross_entropy(logits, arrays["targets"]) * mask).sum() / mask.sum()
    load = mx.stop_gradient((probs * mask[..., None]).sum(axis=(0, 1)))  # (E,)
    z = mx.mean(mx.logsumexp(probs, axis=-1) ** 2) * 0.0
    return ce + z, {"ce": ce, "z": z, "expert_load": [load, load[::-1]]}


def batch(index: int, size: int = 8, length: int = 12, vocab: int = 32, seed: int = 0) -> dict:
    """The ``index``-th global batch of a fixed random stream (numpy)."""
    rng = np.random.default_rng([seed, index])
    tokens = rng.integers(1, vocab, size=(size, length))
    targets = (tokens * 3 + 1) % vocab  # a learnable rule
    lengths = rng.integers(length // 2, length + 1, size=size)
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int32)
    return {"tokens": tokens.astype(np.int32), "targets": targets.astype(np.int32),
            "loss_mask": mask}


def to_arrays(b: dict) -> dict:
    return {k: mx.array(v) for k, v in b.items()}


def shard(b: dict, rank: int, size: int) -> dict:
    return {k: v[rank::size] for k, v in b.items()}
