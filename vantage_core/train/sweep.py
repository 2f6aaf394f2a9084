"""``vantage sweep FILE``: train every configuration of an ablation grid and compare them.

Each run gets its own run directory under the sweep's folder; a run that already finished
(its ``summary.json`` exists) is reused, so an interrupted sweep continues where it stopped.
The comparison is written as ``results.md`` and ``results.csv`` (accuracy, speed, expert-load
balance), ``comparison.png``, and ``curves.png``: each run's validation metric against its training
minutes (the summed step times, evaluation left out), for comparisons at equal minutes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable

from vantage_core.config import expand_sweep, load_config

COLUMNS = [
    ("run", "run"), ("accuracy", "validation {metric}"), ("best", "best {metric}"),
    ("final_ce", "final CE"), ("tokens_per_s", "tokens/s"), ("load_balance", "load balance"),
    ("max_expert_share", "busiest expert"), ("wall_s", "wall s"), ("overrides", "overrides"),
]


def run_sweep(path: str | Path, out_dir: str | Path | None = None, overrides: list[str] = (),
              overwrite: bool = False, progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Train each run of the sweep file (skipping finished ones) and write the comparison."""
    from vantage_core.train.run import train

    base, name, runs = expand_sweep(path)
    out = Path(out_dir) if out_dir else Path("runs") / "sweeps" / name
    out.mkdir(parents=True, exist_ok=True)
    # Check every run's config before training any: a typo in the last run fails at once.
    configs = []
    for r in runs:
        sets = list(r.overrides) + list(overrides) + [f"run.name={r.name}", f"run.dir={out / _slug(r.name)}"]
        configs.append(load_config(base, sets))
    rows, curves = [], {}
    for i, (r, cfg) in enumerate(zip(runs, configs)):
        summary_file = cfg.run.path / "summary.json"
        if summary_file.exists() and not overwrite:
            echo(f"[{i + 1}/{len(runs)}] {r.name}: finished earlier, reusing {cfg.run.path}")
            summary = json.loads(summary_file.read_text())
        else:
            echo(f"[{i + 1}/{len(runs)}] {r.name}: {' '.join(r.overrides) or '(base config)'}")
            summary = train(cfg, overwrite=True, progress=progress, echo=echo)
        rows.append(_row(r.name, r.overrides, cfg, summary))
        curves[r.name] = validation_curve(cfg.run.path, cfg.train.select_metric)
    metric = configs[0].train.select_metric if configs else "execution"
    result = write_table(rows, out, metric)
    result["figure"] = plot_comparison(rows, out / "comparison.png", metric)
    result["curves"] = plot_curves(curves, out / "curves.png", metric) if any(curves.values()) else None
    return result


def validation_curve(run_dir: Path, metric: str) -> list[tuple[float, float]]:
    """(training minutes, metric) at each evaluation of a run (none without its metrics.jsonl):
    the minutes are the summed step times of the training steps before it, so evaluation time is
    not counted."""
    from vantage_core.train.telemetry import METRICS_FILE, read_metrics

    points, seconds = [], 0.0
    if not (run_dir / METRICS_FILE).exists():
        return points
    for record in read_metrics(run_dir):
        if record.get("kind") == "train":
            seconds += float(record.get("step_s") or 0.0)
        elif record.get("kind") == "eval" and isinstance(record.get(metric), (int, float)):
            points.append((seconds / 60.0, float(record[metric])))
    return points


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in name)


def _row(name: str, overrides: list[str], cfg, summary: dict) -> dict:
    metric = cfg.train.select_metric
    best = (summary.get("best") or {}).get("value")
    return {"run": name, "accuracy": (summary.get("validation") or {}).get(metric), "best": best,
            "final_ce": summary.get("final_ce"), "tokens_per_s": summary.get("tokens_per_s"),
            "load_balance": summary.get("load_balance"), "max_expert_share": summary.get("max_expert_share"),
            "wall_s": summary.get("wall_s"), "overrides": " ".join(overrides)}


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 100 else f"{value:.4f}"
    return str(value)


def write_table(rows: list[dict], out: Path, metric: str) -> dict:
    """``results.md`` and ``results.csv`` with one row per run."""
    headers = [label.format(metric=metric) for _, label in COLUMNS]
    md = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    md += ["| " + " | ".join(_fmt(r[key]) for key, _ in COLUMNS) + " |" for r in rows]
    notes = ["", f"validation {metric}: on the validation split after the last step; best: the best "
             f"evaluation during training. tokens/s: median over the second half of training. load "
             f"balance: mean over MoE layers of (1/E) / the busiest expert's share (1 = even). busiest "
             f"expert: the largest mean share any expert received in any layer."]
    (out / "results.md").write_text("\n".join(md + notes) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    return {"markdown": out / "results.md", "csv": out / "results.csv", "rows": rows}


def plot_comparison(rows: list[dict], path: Path, metric: str) -> Path:
    """Bars per run: accuracy, tokens/s and load balance side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("accuracy", f"validation {metric}"), ("tokens_per_s", "tokens/s"), ("load_balance", "load balance (1 = even)")]
    fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 0.45 * len(rows) + 2.2))
    names = [r["run"] for r in rows]
    for ax, (key, title) in zip(axes, panels):
        values = [r[key] if isinstance(r[key], (int, float)) else 0.0 for r in rows]
        ax.barh(range(len(rows)), values, color="tab:blue")
        ax.set_yticks(range(len(rows)), names if ax is axes[0] else [""] * len(rows), fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title)
        for i, v in enumerate(values):
            ax.text(v, i, f" {_fmt(v)}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path, metric: str) -> Path:
    """One line per run: the validation metric against training minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, points in curves.items():
        if points:
            ax.plot([m for m, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
    ax.set_xlabel("training minutes (evaluation not counted)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
