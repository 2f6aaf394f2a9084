"""Validation during training: greedy-decode held-out examples and score them with the
configured metric plugins."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)


def schema_context(model: Any, encoder_text: str):
    """The encoded schema (a :class:`~vantage_core.model.schema.Memory`) of one tokens-target
    request, for :mod:`vantage_core.inference.decoding`."""
    return model.encode_schema(model.schema_inputs({"encoder_texts": [encoder_text]}))


def predict(model: Any, tokenizer: Any, prepared: Any, limit: int | None = None,
            max_new_tokens: int = 160, progress: bool = False) -> list[dict]:
    """Greedy SQL for the first ``limit`` examples of a prepared split.

    Returns per example ``{"id", "sql", "tokens", "seconds"}``.
    """
    from vantage_core.inference.decoding import Search, greedy

    n = len(prepared) if limit is None else min(limit, len(prepared))
    was_training = model.training
    model.eval()
    out = []
    rows = range(n)
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="decoding", unit="query", leave=False, dynamic_ncols=True)
    try:
        for i in rows:
            t = time.perf_counter()
            prompt = prepared.tokens[i][:int(prepared.sql_start[i]) + 1].tolist()  # up to <sql>
            hyp = greedy(model, prompt, eos_id=tokenizer.eos_id, search=Search(max_new_tokens=max_new_tokens),
                         schema=schema_context(model, prepared.encoder_texts[i]))
            out.append({"id": prepared.ids[i], "sql": tokenizer.decode(hyp.tokens).strip(),
                        "tokens": len(hyp.tokens), "seconds": time.perf_counter() - t})
    finally:
        if was_training:
            model.train()
    return out


def score(examples: list, predictions: list[str], metric_specs: list, *, out_dir: str | Path | None,
          workers: int = 1, timeout_s: float = 5.0, max_rows: int = 10000) -> dict[str, float]:
    """Each configured metric's summary over ``predictions`` (aligned with ``examples``).

    Executing metrics run each query under ``timeout_s`` and ``max_rows`` (unless their spec
    sets its own); returns ``{metric: value}``.
    """
    from vantage_core.evaluate.runner import build_metrics, evaluate_predictions

    metrics = build_metrics(metric_specs, timeout_s, max_rows)
    result = evaluate_predictions(examples, predictions, metrics, out_dir=out_dir, workers=workers,
                                  split="validation")
    return summarize(result)


def summarize(result: Any) -> dict[str, float]:
    """The headline number of each metric from ``evaluate_predictions``'s result
    (``{"summary": {metric: {metric: value, "n": ..., ...}}}``)."""
    summary = result.get("summary", result) if isinstance(result, dict) else result
    out = {}
    for name, value in dict(summary).items():
        if isinstance(value, (int, float)):
            out[name] = float(value)
        elif isinstance(value, dict):
            for key in ("accuracy", "score", "mean", name, "all"):
                if isinstance(value.get(key), (int, float)):
                    out[name] = float(value[key])
                    break
    return out


def teacher_forced(model: Any, split: Any, vocab: Any, batch_size: int = 64) -> dict[str, float]:
    """A pointer model on a featurized split with the gold actions as inputs:
    ``action_exact`` (share of examples whose every action is the model's first choice) and
    ``heldout_ce`` (cross-entropy per action). Examples the codec cannot write count as wrong."""
    import mlx.core as mx
    import numpy as np

    from vantage_core import kernels
    from vantage_core.data.actions import collate
    from vantage_core.model.packing import Packing

    was_training = model.training
    model.eval()
    rows = [i for i, f in enumerate(split.feats) if f["actions"] is not None]
    rows.sort(key=lambda i: (len(split.feats[i]["item_texts"]), len(split.feats[i]["actions"])))
    ce_sum = n_tok = exact = 0.0
    try:
        for s in range(0, len(rows), batch_size):
            chunk = rows[s:s + batch_size]
            b = collate([split.feats[i] for i in chunk], [split.examples[i] for i in chunk], vocab)
            memory = model.encode_schema(model.schema_inputs(b))
            packing = Packing.from_mask(b["padding_mask"])  # the padding skipped, as in training
            h, _ = model.hidden(mx.array(b["tokens"]), memory, packing=packing)
            logits = model.logits(h, memory, packing)
            targets, mask = mx.array(b["targets"]), mx.array(b["loss_mask"])
            ce = kernels.cross_entropy(logits, targets) * mask
            ok = mx.all((mx.argmax(logits, -1) == targets) | (mask == 0), axis=1)
            mx.eval(ce, ok)
            ce_sum += ce.sum().item()
            n_tok += mask.sum().item()
            exact += float(np.array(ok).sum())
    finally:
        if was_training:
            model.train()
    return {"action_exact": exact / max(len(split), 1), "heldout_ce": ce_sum / max(n_tok, 1.0)}
