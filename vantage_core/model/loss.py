"""The training objective: next-token cross-entropy where ``loss_mask`` is 1 (mixed, with
``train.distill``, with a cross-entropy on teachers' distributions), plus the routers' auxiliary
losses."""

from __future__ import annotations

import numpy as np

import mlx.core as mx

from vantage_core import kernels
from vantage_core.model.packing import Packing, unpack


def loss(model, batch: dict[str, mx.array], distill_weight: float = 0.0,
         temperature: float = 1.0) -> tuple[mx.array, dict[str, mx.array]]:
    """``batch``: tokens, targets (B, T) int32, loss_mask (B, T) float, ``schema``: the arrays
    of ``model.schema_inputs``, and optionally ``pack_rows``/``pack_inv``, the
    :func:`~vantage_core.model.packing.packing_arrays` of the padding (the decoder's
    position-wise layers then skip it). Returns (total loss, metrics): ``ce``, ``balance``,
    ``z``, ``aux``, ``tokens`` (masked-in count) and ``loads`` ((n_moe_layers, E) share of
    token-slots).

    With ``teacher_ids`` and ``teacher_probs`` (B, T, K) in the batch (``train.distill``), the
    cross-entropy part is ``(1 - distill_weight) * ce + distill_weight * temperature**2 * distill``,
    ``distill`` (also a metric) the cross-entropy of the student's ``softmax(logits / temperature)``
    on that teacher distribution.

    With the vocabulary head alone, logits are computed only at the masked-in positions: the
    prompt (schema and question) costs no vocabulary projection or softmax.
    """
    memory = model.encode_schema(batch.get("schema") or {})
    packing = Packing.from_arrays(batch, batch["tokens"].shape)
    h, aux = model.hidden(batch["tokens"], memory, packing=packing)  # (B, T, d), or (n, d) packed
    mask = batch["loss_mask"].astype(mx.float32)
    targets = batch["targets"]
    teacher = [batch[k] for k in ("teacher_ids", "teacher_probs") if k in batch]
    if len(model.args.heads) == 1:
        mask, targets = mask.reshape(-1), targets.reshape(-1)
        teacher = [a.reshape(-1, a.shape[-1]) for a in teacher]
        h, packing = unpack(packing, h).reshape(-1, h.shape[-1]), None
        keep = np.flatnonzero(np.array(mask) > 0)
        if keep.size < mask.size:  # host sync on an input: cheap, and it skips the prompt rows
            rows = mx.array(keep.astype(np.int32))
            h, targets, mask = h[rows], targets[rows], mask[rows]
            teacher = [a[rows] for a in teacher]
    n_tokens = mx.maximum(mask.sum(), 1.0)
    logits = model.logits(h, memory, packing)
    ce = (kernels.cross_entropy(logits, targets) * mask).sum() / n_tokens
    metrics = {"ce": ce}
    objective = ce
    if teacher:
        metrics["distill"] = teacher_cross_entropy(logits, *teacher, mask, temperature) / n_tokens
        objective = (1.0 - distill_weight) * ce + distill_weight * temperature ** 2 * metrics["distill"]
    total = objective + aux["aux_loss"]
    loads = mx.stack(aux["loads"]) if aux["loads"] else mx.zeros((0,))
    return total, {"loss": total, **metrics, "balance": aux["balance"], "z": aux["z"],
                   "aux": aux["aux_loss"], "tokens": mask.sum(), "loads": loads}


def teacher_cross_entropy(logits: mx.array, ids: mx.array, probs: mx.array, mask: mx.array,
                          temperature: float) -> mx.array:
    """The masked sum over positions of ``-sum_k probs[k] * log softmax(logits / temperature)[ids[k]]``:
    logits (..., U), ``ids``/``probs`` (..., K) the teacher's entries, ``mask`` (...)."""
    z = logits.astype(mx.float32) / temperature
    log_q = mx.take_along_axis(z, ids, axis=-1) - mx.logsumexp(z, axis=-1, keepdims=True)  # (..., K)
    return (-(probs * log_q).sum(-1) * mask).sum()
