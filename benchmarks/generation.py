"""Greedy generation tokens/s of the tiny model with and without the KV cache, at prompt
lengths 64, 256 and 1024 (batch 1, schema cross-attention on, 128 schema tokens).

    python benchmarks/generation.py [--new 32] [--prompts 64,256,1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx

from vantage_core.config import ModelConfig, PluginSpec
from vantage_core.model import build_model
from vantage_core.model.params import _VocabOnly


def generate(model, prompt: mx.array, memory, new: int, use_cache: bool) -> tuple[list[int], float]:
    """Greedy-decode ``new`` tokens; returns them and the seconds spent (prefill included)."""
    start = time.perf_counter()
    out = []
    if use_cache:
        cache = model.make_cache()
        logits, _ = model(prompt, memory, cache=cache)
        for _ in range(new):
            token = logits[:, -1].argmax(-1)[:, None].astype(mx.int32)
            mx.eval(token)
            out.append(token.item())
            logits, _ = model(token, cache=cache)
    else:
        seq = prompt
        for _ in range(new):
            logits, _ = model(seq, memory)
            token = logits[:, -1].argmax(-1)[:, None].astype(mx.int32)
            mx.eval(token)
            out.append(token.item())
            seq = mx.concatenate([seq, token], axis=1)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prompts", default="64,256,1024")
    a = ap.parse_args()
    vocab = 8192
    cfg = ModelConfig(vocab_size=vocab, d_model=256, n_layers=4, n_heads=4, num_experts=8, expert_hidden=512,
                      cross_attention_every=4, max_seq_len=2048,
                      schema_encoder=PluginSpec(name="transformer", dim=128, n_layers=2, n_heads=4))
    mx.random.seed(0)
    model = build_model(cfg, _VocabOnly(vocab))
    model.eval()
    mx.eval(model.parameters())
    rng = np.random.default_rng(0)
    memory = model.encode_schema({"schema_ids": mx.array(rng.integers(1, vocab, (1, 128)).astype(np.int32)),
                                  "schema_mask": mx.ones((1, 128), mx.bool_)})
    mx.eval(memory.states)
    print(f"tiny model (vocab {vocab}, d 256, 4 layers, 8 experts top-2), batch 1, {a.new} new tokens, greedy")
    print(f"{'prompt':>7} {'cache tok/s':>12} {'no-cache tok/s':>15} {'speed-up':>9}  same tokens")
    for length in (int(p) for p in a.prompts.split(",")):
        prompt = mx.array(rng.integers(1, vocab, (1, length)).astype(np.int32))
        generate(model, prompt, memory, 2, True)  # warm-up
        with_cache, t_cache = generate(model, prompt, memory, a.new, True)
        without, t_full = generate(model, prompt, memory, a.new, False)
        print(f"{length:7d} {a.new / t_cache:12.1f} {a.new / t_full:15.1f} {t_full / t_cache:8.1f}x  {with_cache == without}")


if __name__ == "__main__":
    main()
