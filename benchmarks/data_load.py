"""Time to load, serialize and tokenize Spider's 7,000 training examples, cold and cached, and
tokens per example for question, schema and SQL (median and 95th percentile).

    python benchmarks/data_load.py [--spider ../shared/data/spider] [--vocab-size 2048] [--cell-values 0]

Cold: a fresh cache folder (the adapter reads the JSON and the schemas, checks each database,
serializes and tokenizes every example through a ``datasets`` map written to disk). Cached: the
same call again (the adapter loads, the encoded rows come from the Arrow cache file).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import vantage_core  # noqa: F401  (BLAS first)
from vantage_core.config import DataConfig
from vantage_core.data.pipeline import load_split, train_tokenizer
from vantage_core.data.targets import target_format
from vantage_core.data.serialize import serialize_schema


def main() -> None:
    from vantage_plugins.datasets.spider import shared_data_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--spider", default=str(shared_data_dir() / "spider"))
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--cell-values", type=int, default=0)
    ap.add_argument("--max-schema-tokens", type=int, default=384)
    args = ap.parse_args()
    if not (Path(args.spider) / "train_spider.json").is_file():
        raise SystemExit(f"no train_spider.json in {args.spider} (pass --spider or set VANTAGE_SHARED_DATA)")

    with tempfile.TemporaryDirectory() as tmp:
        src = {"name": "spider", "path": args.spider, "holdout_fraction": 0.15, "seed": 0}
        cfg = DataConfig(train=[src], validation=[src], cache_dir=tmp,
                         tokenizer={"name": "sentencepiece", "vocab_size": args.vocab_size},
                         serialization={"cell_values": args.cell_values, "max_schema_tokens": args.max_schema_tokens})
        t = time.perf_counter()
        raw = [load_split(cfg, s) for s in ("train", "validation")]
        t_load = time.perf_counter() - t
        n_rows = sum(r.loaded + sum(r.skipped.values()) for split in raw for r in split.sources)
        t = time.perf_counter()
        tok = train_tokenizer(cfg, Path(tmp) / "tok")
        t_tok = time.perf_counter() - t

        timings = {}
        for label in ("cold", "cached"):
            t = time.perf_counter()
            prepared = [target_format(cfg).prepare(s, tok) for s in ("train", "validation")]
            timings[label] = time.perf_counter() - t
            assert all(p.from_cache == (label == "cached") for p in prepared)
        n = sum(len(p) for p in prepared)
        parts = {k: np.concatenate([p.column(k) for p in prepared])
                 for k in ("n_question", "n_schema", "n_sql", "length")}
        uncut = np.asarray([len(tok.encode(serialize_schema(e.schema).text)) for p in prepared for e in p.examples])
        n_cut = int(sum(np.count_nonzero(p.column("schema_cut")) for p in prepared))

    print(f"Spider train_spider.json: {n_rows} rows, {n} examples encoded, tokenizer vocabulary "
          f"{tok.vocab_size}, cell_values={args.cell_values}, max_schema_tokens={args.max_schema_tokens}")
    for p in prepared:
        for s in p.sources:
            print(f"  {s.summary}" + (f"; dropped from training: {s.dropped}" if s.dropped else ""))
    print(f"load only (JSON, schemas, database checks): {t_load:.2f} s")
    print(f"tokenizer training (questions, SQL, schemas): {t_tok:.2f} s")
    print(f"load + serialize + tokenize, cold:   {timings['cold']:.2f} s")
    print(f"load + serialize + tokenize, cached: {timings['cached']:.2f} s")
    print(f"{'tokens per example':<28} {'median':>8} {'p95':>8} {'max':>8}")
    rows = [("question", parts["n_question"]), (f"schema (cut to {args.max_schema_tokens})", parts["n_schema"]),
            ("schema (uncut, no values)", uncut), ("SQL (cut to max_sql_tokens)", parts["n_sql"]), ("whole sequence", parts["length"])]
    for name, v in rows:
        print(f"{name:<28} {np.median(v):>8.0f} {np.percentile(v, 95):>8.0f} {v.max():>8}")
    print(f"schemas cut to fit: {n_cut} of {n}")
    print(json.dumps({"load_s": round(t_load, 3), "cold_s": round(timings["cold"], 3),
                      "cached_s": round(timings["cached"], 3), "tokenizer_train_s": round(t_tok, 3),
                      **{f"{k}_{q}": float(np.percentile(v, 50 if q == 'median' else 95))
                         for k, v in rows for q in ("median", "p95")}}))


if __name__ == "__main__":
    main()
