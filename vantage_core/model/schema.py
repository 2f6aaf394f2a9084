"""The interface of a schema encoder: the states the decoder cross-attends to."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

import mlx.core as mx


@runtime_checkable
class SchemaEncoder(Protocol):
    """``factory(d_model, tokenizer, **params)`` (``tokenizer``: the decoder's, or None).

    ``provides_states`` is False for an encoder that gives the decoder nothing to attend to
    (``none``); the model then builds no cross-attention layers.
    """

    provides_states: bool

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Serialized question+schema texts -> (ids np.int32 (B, S), mask np.bool_ (B, S))."""

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array | None:
        """(B, S) ids and mask -> states (B, S, d_model), or None."""


def pad_batch(sequences: list[list[int]], pad_id: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Truncate to ``max_len`` and right-pad -> (ids np.int32 (B, S), mask np.bool_ (B, S))."""
    sequences = [list(s)[:max_len] for s in sequences]
    width = max(1, max((len(s) for s in sequences), default=1))
    ids = np.full((len(sequences), width), pad_id, dtype=np.int32)
    mask = np.zeros((len(sequences), width), dtype=np.bool_)
    for i, s in enumerate(sequences):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = True
    return ids, mask
