"""Length-bucketed, padded batches of a prepared split, as numpy arrays.

A batch is a dict:

- ``tokens`` (B, T) int32: the input ids (sequence minus its last token), padded with pad_id
- ``targets`` (B, T) int32: the next token at each position (pad_id on padding)
- ``loss_mask`` (B, T) float32: 1 where the target is an SQL token or the final ``<eos>``
- ``padding_mask`` (B, T) float32: 1 on real tokens, 0 on padding
- ``lengths`` (B,) int32: real tokens per row; ``prompt_lengths`` (B,) int32: tokens up to and
  including ``<sql>`` (what a decoder is given at inference)
- ``encoder_texts``: list[str], the schema text per row (the schema encoder tokenizes it)
- ``example_ids``: list[str]; ``rows``: (B,) int64 indices into ``prepared.examples``
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterator

import numpy as np


def make_batch(prepared: Any, rows: np.ndarray, pad_id: int = 0, pad_multiple: int = 8) -> dict[str, Any]:
    """Pad the rows ``rows`` of ``prepared`` into one batch (T rounded up to ``pad_multiple``,
    so compiled step functions see few distinct shapes)."""
    rows = np.asarray(rows, dtype=np.int64)
    seqs = [prepared.tokens[r] for r in rows]
    lengths = np.asarray([len(s) - 1 for s in seqs], dtype=np.int32)
    T = int(lengths.max())
    T = -(-T // pad_multiple) * pad_multiple
    B = len(rows)
    tokens = np.full((B, T), pad_id, dtype=np.int32)
    targets = np.full((B, T), pad_id, dtype=np.int32)
    loss_mask = np.zeros((B, T), dtype=np.float32)
    padding_mask = np.zeros((B, T), dtype=np.float32)
    sql_start = prepared.sql_start[rows]
    for b, s in enumerate(seqs):
        n = len(s) - 1
        tokens[b, :n] = s[:-1]
        targets[b, :n] = s[1:]
        padding_mask[b, :n] = 1.0
        loss_mask[b, sql_start[b]:n] = 1.0  # targets after <sql>: the SQL tokens and <eos>
    return {"tokens": tokens, "targets": targets, "loss_mask": loss_mask, "padding_mask": padding_mask,
            "lengths": lengths, "prompt_lengths": (sql_start + 1).astype(np.int32),
            "encoder_texts": [prepared.encoder_texts[r] for r in rows],
            "example_ids": [prepared.ids[r] for r in rows], "rows": rows}


def mixture_epoch(source_index: np.ndarray, weights: list[float], rng: np.random.Generator) -> np.ndarray:
    """One epoch of row indices drawn from the sources in proportion to ``weights``.

    The epoch has as many rows as the split; source s gives ``round(N * w_s / sum w)`` of them,
    going through its own rows in a fresh random order (repeating them when it is small).
    Sources that gave no examples are left out and the others' weights renormalized.
    """
    N = len(source_index)
    present = [s for s in range(len(weights)) if (source_index == s).any()]
    total_w = sum(weights[s] for s in present)
    out = []
    for s in present:
        own = np.nonzero(source_index == s)[0]
        want = int(round(N * weights[s] / total_w))
        reps = -(-want // len(own)) if want else 0
        order = np.concatenate([rng.permutation(own) for _ in range(reps)]) if reps else own[:0]
        out.append(order[:want])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


class TrainBatches:
    """Endless training batches: shuffled, bucketed by length, deterministic by seed, sharded
    for data parallelism (rank r of world_size gets every world_size-th batch of each epoch).

    ``bucket_batches`` batches' worth of rows (0: the whole epoch) are sorted by length together,
    then cut into batches, whose order is shuffled: rows in a batch have similar lengths (little
    padding) while the order of batches stays random. ``drawn`` counts the rows each source gave.
    """

    def __init__(self, prepared: Any, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 bucket_batches: int = 32, pad_id: int = 0, pad_multiple: int = 8):
        if len(prepared) == 0:
            from vantage_core.errors import DataError
            raise DataError(f"the {prepared.slot} split has no examples to batch")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.prepared, self.batch_size, self.seed = prepared, batch_size, seed
        self.rank, self.world_size, self.bucket_batches = rank, world_size, bucket_batches
        self.pad_id, self.pad_multiple = pad_id, pad_multiple
        self.epoch = 0
        self.drawn: Counter = Counter()  # "name/split" of a source -> rows drawn so far (this rank)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The row indices of every batch of one epoch for this rank."""
        p = self.prepared
        rng = np.random.default_rng([self.seed, epoch])
        order = mixture_epoch(p.source_index, p.weights, rng)
        order = rng.permutation(order)
        window = self.batch_size * self.bucket_batches if self.bucket_batches > 0 else len(order)
        batches = []
        for i in range(0, len(order), window):
            chunk = order[i:i + window]
            chunk = chunk[np.argsort(p.lengths[chunk], kind="stable")]
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        batches = [b for b in batches if len(b) == self.batch_size] or batches  # full batches only
        batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = max(1, len(batches) // self.world_size)  # every rank takes the same number of steps
        return [batches[(i * self.world_size + self.rank) % len(batches)] for i in range(per_rank)]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        names = [f"{s.name}/{s.split}" for s in self.prepared.sources]
        while True:
            for rows in self.epoch_batches(self.epoch):
                for s in self.prepared.source_index[rows]:
                    self.drawn[names[s]] += 1
                yield make_batch(self.prepared, rows, self.pad_id, self.pad_multiple)
            self.epoch += 1


def train_batches(prepared: Any, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                  **kwargs: Any) -> TrainBatches:
    """An endless iterator of training batches (see :class:`TrainBatches`)."""
    return TrainBatches(prepared, batch_size, seed, rank, world_size, **kwargs)


def eval_batches(prepared: Any, batch_size: int, limit: int | None = None, rank: int = 0, world_size: int = 1,
                 pad_id: int = 0, pad_multiple: int = 8) -> Iterator[dict[str, Any]]:
    """Every example once (the first ``limit``), in length order so batches pad little; rows are
    sharded across ranks. The ``rows`` of each batch map back to ``prepared.examples``."""
    n = len(prepared) if limit is None else min(limit, len(prepared))
    rows = np.arange(n)[rank::world_size]
    rows = rows[np.argsort(prepared.lengths[rows], kind="stable")]
    for i in range(0, len(rows), batch_size):
        yield make_batch(prepared, rows[i:i + batch_size], pad_id, pad_multiple)
