"""Agreement of Vantage's Spider metrics with the official evaluator's own verdicts.

Reads ``<shared>/data/spider/verdicts/*.jsonl`` (the official evaluator's exact-match,
execution and hardness verdicts on real query pairs), scores every pair with the
``exact_match`` and ``execution`` plugins, and reports agreement per file, per hardness and per
mutation kind, listing each disagreement. Rows where the official verdict is null (the
evaluator crashed) are scored and shown but left out of the agreement rates.

    python benchmarks/spider_agreement.py [--mode compat] [--workers 2] [--out runs/agreement]

Writes ``agreement.md``, ``agreement.json``, ``disagreements.jsonl`` and ``agreement.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FILES = ("train_mutations.jsonl", "train_others.jsonl", "train_gold_crashes.jsonl")
TARGETS = {"exact": 0.99, "exec": 0.995}


def shared_data() -> Path:
    return Path(os.environ.get("VANTAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def load_schemas(tables_json: Path) -> dict:
    """db_id -> Schema, from Spider's official tables.json."""
    from vantage_core.data.schemas import schema_from_spider_tables

    with open(tables_json) as f:
        return {e["db_id"]: schema_from_spider_tables(e, str(tables_json)) for e in json.load(f)}


def load_pairs(spider_dir: Path, name: str, schemas: dict) -> tuple[list, list[str], list[dict]]:
    """(examples, predictions, verdict rows) of one verdict file."""
    from vantage_core.data.example import Example
    from vantage_core.evaluate.spider import db_paths_for

    examples, preds, rows = [], [], []
    with open(spider_dir / "verdicts" / name) as f:
        for line in f:
            row = json.loads(line)
            db = spider_dir / "database" / row["db_id"] / f"{row['db_id']}.sqlite"
            examples.append(Example(question="", sql=row["gold"], db_id=row["db_id"], schema=schemas[row["db_id"]],
                                    db_paths=db_paths_for(str(db)), source="spider"))
            preds.append(row["pred"])
            rows.append(row)
    return examples, preds, rows


def rate(pairs: list[tuple]) -> tuple[float | None, int]:
    comparable = [(ours, theirs) for ours, theirs in pairs if theirs is not None]
    if not comparable:
        return None, 0
    return sum(ours == theirs for ours, theirs in comparable) / len(comparable), len(comparable)


def fmt(value: float | None, n: int) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}% ({n})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="compat", choices=("compat", "corrected"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=30.0, help="per query, seconds (official: 60)")
    ap.add_argument("--out", default=str(REPO / "runs" / "spider_agreement"))
    ap.add_argument("--files", nargs="*", default=list(FILES))
    args = ap.parse_args()

    spider_dir = shared_data() / "spider"
    if not (spider_dir / "verdicts").is_dir():
        print(f"no Spider verdicts at {spider_dir / 'verdicts'} (set VANTAGE_SHARED_DATA)", file=sys.stderr)
        return 2
    from vantage_core.evaluate.runner import score_pairs
    from vantage_plugins.metrics.spider_metrics import ExactMatch, ExecutionAccuracy

    schemas = load_schemas(spider_dir / "tables.json")
    metrics = [ExactMatch(mode=args.mode), ExecutionAccuracy(mode=args.mode, timeout_s=args.timeout)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report, disagreements = {}, []
    lines = [f"# Agreement with the official Spider evaluator (mode: {args.mode})", "",
             "Rates are over rows with an official verdict; n in brackets.", "",
             "| file | rows | exact match | execution | hardness | targets met |", "|---|---|---|---|---|---|"]
    details = []
    for name in args.files:
        examples, preds, rows = load_pairs(spider_dir, name, schemas)
        start = time.perf_counter()
        scores = score_pairs(examples, preds, metrics, workers=args.workers, desc=name)
        seconds = time.perf_counter() - start
        em = [(s["exact_match"]["exact"], r["exact"]) for s, r in zip(scores, rows)]
        ex = [(s["execution"]["exec"], r["exec"]) for s, r in zip(scores, rows)]
        hd = [(s["exact_match"]["hardness"], r["hardness"]) for s, r in zip(scores, rows)]
        em_rate, ex_rate, hd_rate = rate(em), rate(ex), rate(hd)
        met = all(v is None or v >= TARGETS[k] for k, (v, _) in (("exact", em_rate), ("exec", ex_rate)))
        report[name] = {"rows": len(rows), "seconds": seconds, "exact": em_rate, "exec": ex_rate,
                        "hardness": hd_rate, "targets_met": met,
                        "null_verdicts": {"exact": sum(r["exact"] is None for r in rows),
                                          "exec": sum(r["exec"] is None for r in rows)}}
        lines.append(f"| {name} | {len(rows)} | {fmt(*em_rate)} | {fmt(*ex_rate)} | {fmt(*hd_rate)} | "
                     f"{'yes' if met else 'NO'} |")
        for field in ("hardness", "kind"):
            groups = defaultdict(list)
            for s, r, e, x in zip(scores, rows, em, ex):
                groups[r.get(field) or "-"].append((e, x))
            if len(groups) < 2:
                continue
            report[name][f"by_{field}"] = {}
            details += ["", f"## {name} by {field}", "", f"| {field} | rows | exact match | execution |", "|---|---|---|---|"]
            for g, pairs in sorted(groups.items()):
                a, b = rate([p[0] for p in pairs]), rate([p[1] for p in pairs])
                report[name][f"by_{field}"][g] = {"exact": a, "exec": b}
                details.append(f"| {g} | {len(pairs)} | {fmt(*a)} | {fmt(*b)} |")
        for s, r in zip(scores, rows):
            for metric, field, ours in (("exact_match", "exact", s["exact_match"]["exact"]),
                                        ("execution", "exec", s["execution"]["exec"])):
                theirs = r[field]
                if ours != theirs:
                    disagreements.append({"file": name, "metric": field, "official": theirs, "ours": ours,
                                          "comparable": theirs is not None, "kind": r.get("kind"),
                                          "db_id": r["db_id"], "gold": r["gold"], "pred": r["pred"],
                                          "error": s[metric].get("error"), "note": r.get("note")})
        print(f"{name}: EM {fmt(*em_rate)}  EX {fmt(*ex_rate)}  hardness {fmt(*hd_rate)}  "
              f"({seconds:.1f}s)", flush=True)
    for m in metrics:
        if hasattr(m, "close"):
            m.close()

    lines += details + ["", "## Disagreements", ""]
    lines += [f"- [{d['file']}] {d['metric']}: official {d['official']}, ours {d['ours']}"
              f"{'' if d['comparable'] else ' (no official verdict: not counted)'} | gold `{d['gold']}` | "
              f"pred `{d['pred']}`" + (f" | {d['error']}" if d["error"] else "") for d in disagreements]
    (out / "agreement.md").write_text("\n".join(lines) + "\n")
    (out / "agreement.json").write_text(json.dumps(report, indent=2))
    with open(out / "disagreements.jsonl", "w") as f:
        for d in disagreements:
            f.write(json.dumps(d) + "\n")
    plot(report, out / "agreement.png", args.mode)
    print("\n".join(lines[:6 + len(args.files)]))
    print(f"{sum(d['comparable'] for d in disagreements)} counted disagreements; report in {out}")
    return 0 if all(r["targets_met"] for r in report.values()) else 1


def plot(report: dict, path: Path, mode: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.38
    for k, (field, label) in enumerate((("exact", "exact match"), ("exec", "execution"))):
        values = [100 * (report[n][field][0] or 0) for n in names]
        bars = ax.bar([i + (k - 0.5) * width for i in range(len(names))], values, width, label=label)
        ax.bar_label(bars, [f"{v:.1f}" if report[n][field][0] is not None else "n/a"
                            for v, n in zip(values, names)], fontsize=8)
    ax.axhline(99, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(names)), [f"{n}\n({report[n]['rows']} rows)" for n in names], fontsize=8)
    ax.set_ylim(90, 101)
    ax.set_ylabel("agreement with official (%)")
    ax.set_title(f"Vantage vs official Spider evaluator ({mode} mode)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
