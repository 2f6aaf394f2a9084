"""What a schema encoder gives the decoder: a :class:`Memory`, and the encoder interface."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

import mlx.core as mx

from vantage_core.model.packing import Packing


@dataclass
class Memory:
    """What the decoder reads besides its own tokens.

    ``states``/``mask``: what cross-attention attends to. ``items``/``item_mask``: the schema
    items a pointer head can name (output ids ``V .. V+N-1``); ``question``/``question_mask``:
    the question pieces a copy head can copy (ids ``V+N .. V+N+Q-1``). An encoder that only
    gives states leaves the rest None.
    """

    states: mx.array | None = None  # (B, S, d)
    mask: mx.array | None = None  # (B, S) bool
    items: mx.array | None = None  # (B, N, d)
    item_mask: mx.array | None = None  # (B, N) bool
    question: mx.array | None = None  # (B, Q, d)
    question_mask: mx.array | None = None  # (B, Q) bool
    packing: Packing | None = None  # where ``states`` are real (not padding), if the encoder says

    def take(self, rows: mx.array) -> "Memory":
        """The memory of batch rows ``rows`` (beams share their request's memory)."""
        return replace(self, packing=None, **{f.name: getattr(self, f.name)[rows] for f in fields(self)
                                              if f.name != "packing" and getattr(self, f.name) is not None})

    @property
    def n_items(self) -> int:
        return 0 if self.items is None else self.items.shape[1]


@runtime_checkable
class SchemaEncoder(Protocol):
    """``factory(d_model, tokenizer, **params)`` (``tokenizer``: the decoder's, or None).

    ``provides_states`` is False for an encoder that gives the decoder nothing to attend to
    (``none``); the model then builds no cross-attention layers.
    """

    provides_states: bool

    def inputs(self, batch: dict[str, Any]) -> dict[str, mx.array]:
        """A host-side batch (numpy arrays and texts from the data pipeline) -> the arrays
        :meth:`memory` reads. Runs outside the gradient, so it may use frozen models and caches."""

    def memory(self, inputs: dict[str, mx.array]) -> Memory:
        """The arrays of :meth:`inputs` -> the decoder's :class:`Memory`."""


class TextSchemaEncoder:
    """For encoders over the serialized question+schema text: ``tokenize(texts)`` and
    ``__call__(ids, mask) -> states`` give :meth:`inputs` and :meth:`memory`."""

    def inputs(self, batch: dict[str, Any]) -> dict[str, mx.array]:
        ids, mask = self.tokenize(list(batch["encoder_texts"]))
        return {"schema_ids": mx.array(ids), "schema_mask": mx.array(mask)}

    def memory(self, inputs: dict[str, mx.array]) -> Memory:
        mask = inputs["schema_mask"].astype(mx.bool_)
        return Memory(self(inputs["schema_ids"], mask), mask)


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
