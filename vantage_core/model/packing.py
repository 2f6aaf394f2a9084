"""Position-wise layers on the real positions of a padded batch only.

A right-padded (B, T) batch spends every projection, norm and feed-forward block on its padding
too: on Spider's training batches about half of the decoder's positions and a fifth of the
schema encoder's are padding (``python benchmarks/padding.py``). A :class:`Packing` holds where the real positions are (computed on
the host from the batch's mask, so it costs no sync); :meth:`Packing.pack` keeps those rows of a
(B, T, ...) array as (n, ...), :meth:`Packing.unpack` puts them back with zeros on the padding,
for attention, which needs the (B, T) layout. Both are permutation gathers whose backward
passes are gathers too (no scatter-add). The real positions' values and the loss's gradients
are those of the padded computation (padding is masked out of every attention and every loss),
except that the routers' auxiliary losses then average over real tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import mlx.core as mx

from vantage_core.kernels import collect_rows
from vantage_core.model.moe import dispatch_rows


def packing_indices(mask: np.ndarray) -> dict[str, np.ndarray] | None:
    """A (B, T) host mask (True / nonzero on real positions) -> ``rows`` (n,) the flat index of
    each real position and ``inv`` (B * T, 1) the packed row of each position (n on padding);
    None when nothing is padding (packing would only copy)."""
    flat = np.asarray(mask).reshape(-1) != 0
    if flat.all():
        return None
    rows = np.flatnonzero(flat).astype(np.int32)
    inv = np.full(flat.size, rows.size, np.int32)
    inv[rows] = np.arange(rows.size, dtype=np.int32)
    return {"rows": rows, "inv": inv.reshape(-1, 1)}


def packing_arrays(mask: np.ndarray) -> dict[str, mx.array]:
    """The packing of a (B, T) host mask as the entries an input dict carries (``pack_rows``,
    ``pack_inv``; none when nothing is padding), read back by :meth:`Packing.from_arrays`."""
    idx = packing_indices(mask)
    return {} if idx is None else {"pack_rows": mx.array(idx["rows"]), "pack_inv": mx.array(idx["inv"])}


@dataclass
class Packing:
    """The real positions of a (B, T) batch (see :func:`packing_indices`)."""

    rows: mx.array  # (n,) int32
    inv: mx.array  # (B * T, 1) int32
    shape: tuple[int, int]  # (B, T)

    @classmethod
    def from_arrays(cls, arrays: dict, shape: tuple[int, ...]) -> "Packing | None":
        """The packing of :func:`packing_arrays`' entries in ``arrays`` for a batch of ``shape``
        (B, T), or None where it has none."""
        return cls(arrays["pack_rows"], arrays["pack_inv"], tuple(shape)) if "pack_rows" in arrays else None

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> "Packing | None":
        return cls.from_arrays(packing_arrays(mask), mask.shape)

    def pack(self, x: mx.array) -> mx.array:
        """(B, T, d) -> (n, d): the real positions' rows."""
        return dispatch_rows(x.reshape(-1, x.shape[-1]), self.rows, self.inv)

    def unpack(self, x: mx.array) -> mx.array:
        """(n, d) -> (B, T, d), zeros on the padding."""
        return collect_rows(x, self.rows, self.inv).reshape(*self.shape, x.shape[-1])


def pack(packing: Packing | None, x: mx.array) -> mx.array:
    """(B, T, d) -> (n, d) the real positions' rows; ``x`` itself when there is no packing."""
    return x if packing is None else packing.pack(x)


def unpack(packing: Packing | None, x: mx.array) -> mx.array:
    """(n, d) -> (B, T, d) with zeros on the padding; ``x`` itself when there is no packing."""
    return x if packing is None else packing.unpack(x)
