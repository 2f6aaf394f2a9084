"""Latency per question (p50, p95) and generation tokens/s, beside mlx-lm's generate.

    python benchmarks/latency.py --checkpoint MODEL_DIR [--config configs/tiny.yaml] [--n 30]
    python benchmarks/latency.py --checkpoint runs/spider_seed0 --new-databases 21

``--new-databases N``: what `vantage generate --db NEW.sqlite "question" --run` costs on a
database the process has never seen: for each of N databases of the checkpoint's validation
split, every cache is emptied first (the schema read from the file, its cell values for the
linker, the MiniLM states of its names and of the question), then one question is answered
with the checkpoint's own decoding (beam, constraint, execution-guided choice) and run. A second
question on the same database shows the warm cost. Reported: p50 and p95 of each.

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
from pathlib import Path

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx
import numpy as np


def pct(xs, q):
    return float(np.percentile(np.array(xs), q))


def forget_everything(engine) -> None:
    """Empty every cache a new database would miss: schema, cell values, frozen states."""
    from vantage_core.data import linking
    from vantage_core.sql.database import close_all

    close_all()  # the connectors, and the schemas they read
    linking._column_values.cache_clear()
    linking._cased_values.cache_clear()
    frozen = getattr(engine.model.schema_encoder, "frozen", None)
    if frozen is not None:
        frozen.pieces.clear()
        frozen.pooled.clear()


def new_database_latency(checkpoint: str, n: int) -> None:
    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.engine import Engine

    import tempfile

    engine = Engine.load(checkpoint)
    frozen = getattr(engine.model.schema_encoder, "frozen", None)
    if frozen is not None:  # an empty disk store too: nothing of these databases computed before
        frozen.cache_dir = Path(tempfile.mkdtemp(prefix="vantage-latency-"))
    by_db: dict[str, list] = {}
    for ex in load_split(engine.config.data, "validation").examples:
        by_db.setdefault(ex.db_id, []).append(ex)
    dbs = sorted(by_db)[:n]
    first = by_db[dbs[0]][0]
    engine.generate(first.question, db_path=first.db_paths[0], run=True)  # warm-up: imports, MiniLM weights
    cold, warm = [], []
    for db in dbs:
        forget_everything(engine)
        for times, ex in ((cold, by_db[db][0]), (warm, by_db[db][1 % len(by_db[db])])):
            t = time.perf_counter()
            engine.generate(ex.question, db_path=ex.db_paths[0], run=True)
            times.append(time.perf_counter() - t)
    inf = engine.config.inference
    print(f"{checkpoint}: {inf.decoding} {inf.beam_size}, constraint "
          f"{inf.constraint.name if inf.constraint else 'none'}, execution-guided {inf.execution_guided}, run=True")
    print(f"  first question on a new database ({len(cold)} databases): p50 {pct(cold, 50) * 1000:.0f} ms, "
          f"p95 {pct(cold, 95) * 1000:.0f} ms, max {max(cold) * 1000:.0f} ms")
    print(f"  second question on it: p50 {pct(warm, 50) * 1000:.0f} ms, p95 {pct(warm, 95) * 1000:.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--new-databases", type=int, default=0, metavar="N",
                    help="Time one question on each of N databases never seen by the process.")
    ap.add_argument("--config", help="Rebuild the model from this config's model section (random weights).")
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--tokens", type=int, default=64, help="Tokens per question with --config (EOS masked).")
    args = ap.parse_args()
    if args.new_databases:
        new_database_latency(args.checkpoint, args.new_databases)
        return

    from vantage_core.config import load_config
    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.engine import Engine
    from vantage_core.model.io import load_model
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
        prompt_lens.append(len(engine.request(ex.question, ex.schema).prompt))
    print(f"vantage  {label}")
    print(f"  {len(examples)} questions, prompt {statistics.mean(prompt_lens):.0f} tokens on average, "
          f"{statistics.mean(toks):.1f} generated on average")
    print(f"  latency per question: p50 {pct(secs, 50) * 1000:.1f} ms, p95 {pct(secs, 95) * 1000:.1f} ms")
    print(f"  generation rate (prefill included): {sum(toks) / sum(secs):.1f} tokens/s")

    # Decode-only rate of our model, prompt prefilled first (comparable with mlx-lm's step loop).

    req = engine.request(ex0.question, ex0.schema)
    memory = model.encode_schema(model.schema_inputs(engine.host_batch([req])))
    cache = model.make_cache()
    logits, _ = model(mx.array([req.prompt], dtype=mx.int32), memory, cache=cache)
    y = mx.argmax(logits[:, -1], axis=-1)
    mx.eval(y)
    n = args.tokens
    t = time.perf_counter()
    for _ in range(n):
        logits, _ = model(y[:, None].astype(mx.int32), memory, cache=cache)
        y = mx.argmax(logits[:, -1], axis=-1)
        mx.eval(y)
    ours = n / (time.perf_counter() - t)
    print(f"  decode-only: {ours:.1f} tokens/s ({n} tokens after a {len(req.prompt)}-token prompt)")

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
        for (tok_id, _), _i in zip(generate_step(mx.array(req.prompt), ref, max_tokens=n + 1), range(n + 1)):
            got += 1
            if first is None:
                first = time.perf_counter()  # after the prefill and the first token
        rates.append((got - 1) / (time.perf_counter() - first))
    print(f"mlx-lm   Mixtral, same dimensions (no schema cross-attention): decode-only {max(rates):.1f} tokens/s")


if __name__ == "__main__":
    main()
