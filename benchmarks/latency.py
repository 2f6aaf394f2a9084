"""Latency per question (p50, p95) and generation tokens/s, beside mlx-lm's generate.

    python benchmarks/latency.py --checkpoint MODEL_DIR [--config configs/tiny.yaml] [--n 30]

Decodes ``--n`` questions of the checkpoint's test split greedily (no constraint) and reports
the per-question wall time and the decode rate. With ``--config``, the model is rebuilt from
that config's ``model`` section with random weights (the checkpoint's tokenizer and data), so the
tiny config can be timed without training it; EOS is then masked so every question generates
exactly ``--tokens`` tokens. Where mlx-lm is installed, its Mixtral with the same dimensions
(layers, width, heads, experts, top-k, expert width, vocabulary) generates the same number of
tokens from a prompt of the same length with ``mlx_lm.generate.generate_step``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import numpy as np


def pct(xs, q):
    return float(np.percentile(np.array(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--config", help="Rebuild the model from this config's model section (random weights).")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=64, help="Tokens per question with --config (EOS masked).")
    args = ap.parse_args()

    from vantage_core.config import load_config
    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.engine import Engine, load_model
    from vantage_core.model import build_model

    model, tok, cfg, info = load_model(args.checkpoint)
    label = args.checkpoint
    if args.config:
        cfg.model = load_config(args.config, registry=False).model
        cfg.model.vocab_size = None
        model = build_model(cfg.model, tok)
        mx.eval(model.parameters())
        model.eval()
        label = f"{args.config} (random weights, vocab {tok.vocab_size})"
    engine = Engine(model, tok, cfg, info)
    examples = load_split(cfg.data, "test" if cfg.data.test else "validation").examples[:args.n]
    opts = engine.options(decoding="greedy", constraint="none", execution_guided=False,
                          max_new_tokens=args.tokens if args.config else cfg.inference.max_new_tokens)
    if args.config:  # fixed-length generations: forbid EOS through a processor
        from vantage_core.inference import decoding

        real_decode = decoding.decode

        def no_eos(*a, **k):
            def mask(generated, logits):
                return logits + mx.array(np.where(np.arange(logits.shape[-1]) == tok.eos_id, -1e9, 0.0).astype(np.float32))
            k["processor"] = mask
            return real_decode(*a, **k)

        import vantage_core.inference.engine as eng_mod

        eng_mod.decode = no_eos
    ex0 = examples[0]
    engine.generate(ex0.question, db_path=ex0.db_paths[0], schema=ex0.schema, options=opts)  # warm-up
    secs, toks, prompt_lens = [], [], []
    for ex in examples:
        t = time.perf_counter()
        g = engine.generate(ex.question, db_path=ex.db_paths[0], schema=ex.schema, options=opts)
        secs.append(time.perf_counter() - t)
        toks.append(g.n_tokens)
        prompt_lens.append(len(engine.prompt(ex.question, ex.schema)[0]))
    print(f"vantage  {label}")
    print(f"  {len(examples)} questions, prompt {statistics.mean(prompt_lens):.0f} tokens on average, "
          f"{statistics.mean(toks):.1f} generated on average")
    print(f"  latency per question: p50 {pct(secs, 50) * 1000:.1f} ms, p95 {pct(secs, 95) * 1000:.1f} ms")
    print(f"  generation rate (prefill included): {sum(toks) / sum(secs):.1f} tokens/s")

    # Decode-only rate of our model, prompt prefilled first (comparable with mlx-lm's step loop).

    prompt, enc_text = engine.prompt(ex0.question, ex0.schema)
    ctx = engine.schema_context(enc_text)
    cache = model.make_cache()
    logits, _ = model(mx.array([prompt], dtype=mx.int32), schema_states=ctx.states, schema_mask=ctx.mask, cache=cache)
    y = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(y)
    n = args.tokens
    t = time.perf_counter()
    for _ in range(n):
        logits, _ = model(y[:, None].astype(mx.int32), cache=cache)
        y = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(y)
    ours = n / (time.perf_counter() - t)
    print(f"  decode-only: {ours:.1f} tokens/s ({n} tokens after a {len(prompt)}-token prompt)")

    try:
        from mlx_lm.generate import generate_step
        from mlx_lm.models import mixtral
    except ImportError:
        print("mlx-lm not installed: no comparison")
        return
    a = model.args
    k = next((layer.ffn.router.k for layer in model.layers if hasattr(layer.ffn, "router")), 2)
    margs = mixtral.ModelArgs(model_type="mixtral", vocab_size=a.vocab_size, hidden_size=a.d_model,
                              intermediate_size=cfg.model.expert_hidden, num_hidden_layers=a.n_layers,
                              num_attention_heads=a.n_heads, num_key_value_heads=a.n_kv_heads,
                              num_local_experts=cfg.model.num_experts, num_experts_per_tok=k,
                              rope_theta=a.rope_theta)
    ref = mixtral.Model(margs)
    mx.eval(ref.parameters())
    rates = []
    for _ in range(2):
        t = time.perf_counter()
        got = 0
        first = None
        for (tok_id, _), _i in zip(generate_step(mx.array(prompt), ref, max_tokens=n + 1), range(n + 1)):
            got += 1
            if first is None:
                first = time.perf_counter()  # after the prefill and the first token
        rates.append((got - 1) / (time.perf_counter() - first))
    print(f"mlx-lm   Mixtral, same dimensions (no schema cross-attention): decode-only {max(rates):.1f} tokens/s")


if __name__ == "__main__":
    main()
