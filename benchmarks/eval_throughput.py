"""Pairs scored per second by ``exact_match`` and ``execution``, 1 worker vs 2.

The pairs are Spider's training gold queries scored against themselves
(``<shared>/data/spider/train_spider.json``, 7,000 pairs; the 96 on the two absent databases
score as unscorable for execution). Also checks that 2 workers give the same per-example
results as 1.

    python benchmarks/eval_throughput.py [--limit 7000] [--out runs/eval_throughput]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=7000)
    ap.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--out", default=str(REPO / "runs" / "eval_throughput"))
    args = ap.parse_args()

    spider_dir = Path(os.environ.get("VANTAGE_SHARED_DATA", REPO.parent / "shared" / "data")) / "spider"
    if not (spider_dir / "train_spider.json").is_file():
        print(f"no Spider data at {spider_dir} (set VANTAGE_SHARED_DATA)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO / "benchmarks"))
    from spider_agreement import load_schemas

    from vantage_core.data.example import Example
    from vantage_core.evaluate.runner import score_pairs
    from vantage_plugins.metrics.spider_metrics import ExactMatch, ExecutionAccuracy

    schemas = load_schemas(spider_dir / "tables.json")
    rows = json.loads((spider_dir / "train_spider.json").read_text())[: args.limit]
    examples = []
    for r in rows:
        db = spider_dir / "database" / r["db_id"] / f"{r['db_id']}.sqlite"
        examples.append(Example(r["question"], r["query"], r["db_id"], schemas[r["db_id"]],
                                [str(db)] if db.is_file() else [], "spider"))
    preds = [r["query"] for r in rows]

    results, reference = {}, {}
    for name, factory in (("exact_match", ExactMatch), ("execution", ExecutionAccuracy)):
        for workers in args.workers:
            metric = factory()
            start = time.perf_counter()
            scores = score_pairs(examples, preds, [metric], workers=workers, desc=f"{name} x{workers}")
            seconds = time.perf_counter() - start
            if hasattr(metric, "close"):
                metric.close()
            same = reference.setdefault(name, scores) == scores
            key = metric.key
            scored = [s[name][key] for s in scores if s[name][key] is not None]
            results[f"{name}/{workers}"] = {"metric": name, "workers": workers, "pairs": len(scores),
                                            "seconds": round(seconds, 2), "pairs_per_s": round(len(scores) / seconds, 1),
                                            "score": round(sum(scored) / len(scored), 4), "same_as_first": same}
            print(json.dumps(results[f"{name}/{workers}"]), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "throughput.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "throughput.png", len(examples))
    print(f"figure: {out / 'throughput.png'}")
    return 0 if all(r["same_as_first"] for r in results.values()) else 1


def plot(results: dict, path: Path, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = sorted({r["metric"] for r in results.values()})
    workers = sorted({r["workers"] for r in results.values()})
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(workers)
    for k, w in enumerate(workers):
        values = [results[f"{m}/{w}"]["pairs_per_s"] for m in metrics]
        bars = ax.bar([i + (k - (len(workers) - 1) / 2) * width for i in range(len(metrics))], values, width,
                      label=f"{w} worker{'s' if w > 1 else ''}")
        ax.bar_label(bars, [f"{v:.0f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_ylabel("pairs scored per second")
    ax.set_title(f"Spider train gold vs itself ({n} pairs)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
