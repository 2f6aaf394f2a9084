"""The training objective: next-token cross-entropy where ``loss_mask`` is 1, plus the routers'
auxiliary losses."""

from __future__ import annotations

import numpy as np

import mlx.core as mx

from vantage_core import kernels
from vantage_core.model.packing import Packing, unpack


def loss(model, batch: dict[str, mx.array]) -> tuple[mx.array, dict[str, mx.array]]:
    """``batch``: tokens, targets (B, T) int32, loss_mask (B, T) float, ``schema``: the arrays
    of ``model.schema_inputs``, and optionally ``pack_rows``/``pack_inv``, the
    :func:`~vantage_core.model.packing.packing_arrays` of the padding (the decoder's
    position-wise layers then skip it). Returns (total loss, metrics): ``ce``, ``balance``,
    ``z``, ``aux``, ``tokens`` (masked-in count) and ``loads`` ((n_moe_layers, E) share of
    token-slots).

    With the vocabulary head alone, logits are computed only at the masked-in positions: the
    prompt (schema and question) costs no vocabulary projection or softmax.
    """
    memory = model.encode_schema(batch.get("schema") or {})
    packing = Packing.from_arrays(batch, batch["tokens"].shape)
    h, aux = model.hidden(batch["tokens"], memory, packing=packing)  # (B, T, d), or (n, d) packed
    mask = batch["loss_mask"].astype(mx.float32)
    targets = batch["targets"]
    if len(model.args.heads) == 1:
        mask, targets = mask.reshape(-1), targets.reshape(-1)
        h, packing = unpack(packing, h).reshape(-1, h.shape[-1]), None
        keep = np.flatnonzero(np.array(mask) > 0)
        if keep.size < mask.size:  # host sync on an input: cheap, and it skips the prompt rows
            rows = mx.array(keep.astype(np.int32))
            h, targets, mask = h[rows], targets[rows], mask[rows]
    n_tokens = mx.maximum(mask.sum(), 1.0)
    ce = (kernels.cross_entropy(model.logits(h, memory, packing), targets) * mask).sum() / n_tokens
    total = ce + aux["aux_loss"]
    loads = mx.stack(aux["loads"]) if aux["loads"] else mx.zeros((0,))
    return total, {"loss": total, "ce": ce, "balance": aux["balance"], "z": aux["z"],
                   "aux": aux["aux_loss"], "tokens": mask.sum(), "loads": loads}
