"""Several trained models decoding as one: at every step, the average of their log-probabilities.

The members read the same requests, so they must agree on everything that builds a request
and reads an output: the output vocabulary, the data target and its featurization (linker,
tokenizer, serialization) and the schema encoder. Their sizes and weights may differ (seeds,
checkpoints of one run, ablations). Each member keeps its own schema memory and KV cache;
:class:`Ensemble` walks them side by side, so beam search, constraints and execution-guided
choice work unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import mlx.core as mx

from vantage_core.config import Config
from vantage_core.errors import ConfigError


class EnsembleMemory:
    """One :class:`~vantage_core.model.schema.Memory` per member, batched alike."""

    def __init__(self, parts: Sequence[Any]):
        self.parts = list(parts)

    def take(self, rows: mx.array) -> "EnsembleMemory":
        return EnsembleMemory([m.take(rows) for m in self.parts])

    @property
    def n_items(self) -> int:
        return self.parts[0].n_items

    @property
    def question(self) -> mx.array | None:
        return self.parts[0].question


class Ensemble:
    """``members`` as one model: logits are the mean of the members' log-softmax (a normalized
    geometric mean of their distributions once the decoder takes its log-softmax)."""

    def __init__(self, members: Sequence[Any]):
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two models")
        self.members = list(members)
        self.args = self.members[0].args
        self.schema_encoder = self.members[0].schema_encoder

    def schema_inputs(self, batch: dict) -> list[dict]:
        return [m.schema_inputs(batch) for m in self.members]

    def encode_schema(self, inputs: list[dict]) -> EnsembleMemory:
        return EnsembleMemory([m.encode_schema(i) for m, i in zip(self.members, inputs)])

    def __call__(self, tokens: mx.array, memory: EnsembleMemory | None = None, cache: list | None = None):
        parts = memory.parts if memory is not None else [None] * len(self.members)
        caches = cache if cache is not None else [None] * len(self.members)
        outs = [m(tokens, p, cache=c) for m, p, c in zip(self.members, parts, caches)]
        logp = [l.astype(mx.float32) - mx.logsumexp(l.astype(mx.float32), axis=-1, keepdims=True) for l, _ in outs]
        return mx.mean(mx.stack(logp), axis=0), outs[0][1]  # (B, T, V); the first member's aux

    def make_cache(self) -> list:
        return [m.make_cache() for m in self.members]

    def step_memory(self, memory: EnsembleMemory) -> EnsembleMemory:
        return EnsembleMemory([m.step_memory(p) for m, p in zip(self.members, memory.parts)])

    def reorder_cache(self, cache: list, rows: mx.array, requests: mx.array | None = None) -> list:
        return [m.reorder_cache(c, rows, requests) for m, c in zip(self.members, cache)]

    def eval(self) -> "Ensemble":
        for m in self.members:
            m.eval()
        return self


def request_side(cfg: Config) -> dict:
    """What builds a request and reads an output, which every member of an ensemble (and every
    teacher of a distilled student, :mod:`vantage_core.train.distill`) must share."""
    data = cfg.data
    return {"data.target": data.target, "data.linker": data.linker.model_dump() if data.linker else None,
            "data.tokenizer": data.tokenizer.model_dump(), "data.serialization": data.serialization.model_dump(),
            "model.schema_encoder.name": cfg.model.schema_encoder.name,
            "model.heads": list(cfg.model.heads)}


def vocabulary(tokenizer: Any) -> list[str]:
    """The output vocabulary, each id's text."""
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


def load_ensemble(paths: Sequence[str | Path], load_one: Any) -> tuple[Ensemble, Any, Config, dict]:
    """``(Ensemble, tokenizer, config, info)`` of the models at ``paths`` (each loaded with
    ``load_one``, as a single model would be); the first member's tokenizer and config serve
    requests. Raises :class:`ConfigError` naming the member that does not fit the first."""
    loaded = [load_one(p) for p in paths]
    _, tokenizer, cfg, info = loaded[0]
    want, vocab = request_side(cfg), vocabulary(tokenizer)
    for path, (_, tok, c, _) in zip(paths[1:], loaded[1:]):
        theirs = request_side(c)
        for key in want:
            if theirs[key] != want[key]:
                raise ConfigError(f"{path}: {key} is {theirs[key]!r}, the first model ({paths[0]}) has "
                                  f"{want[key]!r}; an ensemble's models must read requests alike")
        if vocabulary(tok) != vocab:
            raise ConfigError(f"{path}: its output vocabulary differs from the first model's ({paths[0]}); "
                              f"an ensemble's models must share it (train them on the same data and tokenizer)")
    members = [m for m, _, _, _ in loaded]
    info = {**info, "ensemble": [i.get("folder", str(p)) for p, (_, _, _, i) in zip(paths, loaded)]}
    return Ensemble(members), tokenizer, cfg, info
