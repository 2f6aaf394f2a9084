"""Benchmark the expert-specialization atlas: time to analyze N examples, and the specialization
per MoE layer of trained models against two baselines.

    python benchmarks/atlas.py runs/quickstart --examples 1000
    python benchmarks/atlas.py runs/sweep/topk runs/sweep/aux_free --split test

For each run: the seconds to route N examples teacher-forced (split into loading/encoding the
examples, the routing pass, the summary with 5 shuffles, and the CSV + heatmap output), and per
layer I(expert; role) in bits for the trained model, for the same tokens with shuffled routing
(the finite-sample floor), and for the same architecture with freshly initialised weights
(how much role information routing carries before any training, since a router sees the token
embedding). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories (or checkpoint / export folders)")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--split", default="train", help="default train: the quickstart's test split has fewer than 1,000")
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--out", default=None, help="where the atlases go (default: a temporary folder)")
    args = ap.parse_args(argv)

    from vantage_core.analysis.atlas import collect_routing, init_baseline, load_examples, summarize, write_atlas
    from vantage_core.data.targets import target_format
    from vantage_core.model.io import load_model

    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="atlas-bench-"))
    rows = []
    for run in args.runs:
        name = Path(run).resolve().name
        model, tok, cfg, _ = load_model(run)
        t0 = time.perf_counter()
        examples = load_examples(cfg, args.dataset, args.split, args.examples)
        t_load = time.perf_counter() - t0
        record = collect_routing(model, tok, examples, target_format(cfg.data), batch_size=args.batch_size,
                                 progress=False)
        t1 = time.perf_counter()
        atlas = summarize(record, name=name)
        t_summary = time.perf_counter() - t1
        t2 = time.perf_counter()
        write_atlas(atlas, out_root / name)
        t_write = time.perf_counter() - t2
        total = t_load + record.seconds + t_summary + t_write

        init_baseline(atlas, cfg, tok, examples, batch_size=args.batch_size)  # same architecture, untrained
        write_atlas(atlas, out_root / name)  # again, with the untrained column and bars
        print(f"{name} ({cfg.model.router.name}): {record.n_examples} examples, {len(record.roles)} SQL tokens; "
              f"total {total:.1f} s = load+encode {t_load:.1f} s, routing pass {record.seconds:.1f} s "
              f"({len(record.roles) / record.seconds:.0f} SQL tokens/s, encoding included), summary "
              f"{t_summary:.1f} s, tables+plots {t_write:.1f} s; H(role) = {atlas.role_entropy:.3f} bits; "
              f"atlas in {out_root / name}", file=sys.stderr)
        for la in atlas.layers:
            rows.append((name, cfg.model.router.name, la.layer, la.mi, la.mi_shuffled, la.mi_init,
                         float(la.specialization.max()), la.mi_copied, la.mi_copied_shuffled))
        rows.append((name, "", "time", total, record.n_examples, 0, 0, 0, 0))

    print("| run | router | MoE layer | I(expert; role) bits | shuffled | untrained init | max expert KL | "
          "I(expert; copied) | shuffled |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if r[2] == "time":
            continue
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f} | {r[4]:.4f} | {r[5]:.4f} | {r[6]:.4f} | {r[7]:.4f} | {r[8]:.4f} |")
    for r in rows:
        if r[2] == "time":
            print(f"\n{r[0]}: {r[4]} examples analysed in {r[3]:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
