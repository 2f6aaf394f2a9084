"""Small stand-ins for the inference tests: a recurrent toy decoder with a cache and routing."""

from __future__ import annotations

from dataclasses import dataclass

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn


@dataclass
class ToyRouting:
    indices: mx.array  # (N, k)
    weights: mx.array  # (N, k)


class ToyCache:
    def __init__(self):
        self.state = None  # (B, d) running state


class ToyDecoder(nn.Module):
    """h_t = tanh(A h_{t-1} + E[x_t] + mean(schema)); logits = W h_t. A cache holds h."""

    def __init__(self, vocab_size: int = 12, d: int = 16, seed: int = 0, num_experts: int = 4):
        super().__init__()
        mx.random.seed(seed)
        self.embed = nn.Embedding(vocab_size, d)
        self.recur = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, vocab_size)
        self.router = nn.Linear(d, num_experts, bias=False)
        self.out.weight = self.out.weight * 3.0  # peaky enough that beams disagree with greedy

    def make_cache(self):
        return [ToyCache()]

    def __call__(self, tokens, memory=None, cache=None):
        B, T = tokens.shape
        c = cache[0] if cache is not None else ToyCache()
        h = c.state if c.state is not None else mx.zeros((B, self.recur.weight.shape[0]))
        ctx = 0.0 if memory is None or memory.states is None else memory.states.mean(axis=1)
        outs = []
        for t in range(T):
            h = mx.tanh(self.recur(h) + self.embed(tokens[:, t]) + ctx)
            outs.append(h)
        c.state = h
        hs = mx.stack(outs, axis=1)  # (B, T, d)
        scores = mx.softmax(self.router(hs.reshape(B * T, -1)), axis=-1)  # (B*T, E)
        idx = mx.argsort(-scores, axis=-1)[:, :2]
        w = mx.take_along_axis(scores, idx, axis=-1)
        return self.out(hs), {"routing": [ToyRouting(idx, w), ToyRouting(idx[:, ::-1], w[:, ::-1])]}


def sequence_logprob(model, prompt, tokens, eos_id, finished=True, schema=None):
    """The log-probability of ``tokens`` (+ EOS) after ``prompt``, recomputed without a cache."""
    seq = list(prompt) + list(tokens)
    logits, _ = model(mx.array([seq], dtype=mx.int32), schema)
    logp = logits[0] - mx.logsumexp(logits[0], axis=-1, keepdims=True)
    targets = list(tokens) + ([eos_id] if finished else [])
    return sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(targets))
