"""``vantage quickstart``: the whole product in one command, on a fresh machine with no data and
no network. Generates the synthetic databases, trains a tiny MoE model on them, evaluates it on
synthetic databases it never saw (execution accuracy), shows a few generated queries with their
results, and writes a report with plots."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

from vantage_core.resources import configs_dir

CONFIG = configs_dir() / "quickstart.yaml"  # the checkout's configs/, else the wheel's copy
SHOWN_EXAMPLES = 5


def run_quickstart(out: str | Path = "runs/quickstart", config: str | Path | None = None,
                   overrides: list[str] = (), overwrite: bool = True, progress: bool = True,
                   echo: Callable[[str], None] = print) -> dict:
    """Train and test the quickstart model; return its figures (also in ``OUT/quickstart.json``)."""
    from vantage_core.config import load_config
    from vantage_core.errors import ConfigError
    from vantage_core.train.run import train

    t0 = time.perf_counter()
    config = Path(config) if config else CONFIG
    if not config.exists():
        raise ConfigError(f"{config}: the quickstart config is missing; pass --config FILE")
    cfg = load_config(config, [*overrides, f"run.dir={out}"])
    if not cfg.data.test:
        raise ConfigError(f"{config}: data.test is empty; the quickstart tests on held-out databases")
    echo(f"vantage quickstart: training a tiny MoE text-to-SQL model on generated databases ({config.name})")
    summary = train(cfg, overwrite=overwrite, progress=progress, echo=echo)
    if summary.get("stopped"):
        return summary
    train_s = time.perf_counter() - t0
    test = test_on_unseen(cfg, progress=progress, echo=echo)
    wall_s = time.perf_counter() - t0
    figures = {"wall_s": wall_s, "train_s": train_s, "test": test["scores"], "test_examples": test["n"],
               "test_databases": test["databases"], "train_databases": test["train_databases"],
               "decode_s": test["decode_s"], "validation": summary.get("validation"),
               "tokens_per_s": summary.get("tokens_per_s"), "parameters": summary.get("parameters")}
    run_dir = cfg.run.path
    (run_dir / "quickstart.json").write_text(json.dumps(figures, indent=2))
    _append_report(run_dir, figures, test["shown"])
    echo("")
    for line in _shown_lines(test["shown"]):
        echo(line)
    acc = test["scores"].get("execution")
    echo(f"\nexecution accuracy on {test['n']} questions over {len(test['databases'])} databases never seen "
         f"in training: {acc:.1%}" if acc is not None else "")
    echo(f"wall time {wall_s / 60:.1f} min; report: {run_dir / 'report.md'}")
    return figures


def test_on_unseen(cfg, progress: bool = True, echo: Callable[[str], None] = print) -> dict:
    """Decode the test split (databases disjoint from training) with the best checkpoint,
    through the same engine as ``vantage generate``."""
    from vantage_core.data.pipeline import load_split
    from vantage_core.sql.sandbox import execute
    from vantage_core.inference.engine import Engine, predict_examples
    from vantage_core.sql.format import formatted_sql
    from vantage_core.train.evaluation import score

    run_dir = cfg.run.path
    test = load_split(cfg.data, "test", echo=echo)
    train_dbs = {r["db_id"] for r in _train_db_ids(run_dir, cfg)}
    databases = sorted({e.db_id for e in test.examples})
    overlap = train_dbs & set(databases)
    if overlap:  # the claim "never seen" must hold, or the run says so
        echo(f"warning: {len(overlap)} test databases also occur in training: {sorted(overlap)[:5]}")
    engine = Engine.load(run_dir)
    t = time.perf_counter()
    sqls = predict_examples(engine, test.examples, progress=progress)
    decode_s = time.perf_counter() - t
    scores = score(test.examples, sqls, cfg.evaluate.metrics, out_dir=run_dir / "test",
                   workers=cfg.evaluate.workers, timeout_s=cfg.evaluate.timeout_s, max_rows=cfg.evaluate.max_rows)
    shown = []
    step = max(1, len(test.examples) // SHOWN_EXAMPLES)
    for ex, sql in list(zip(test.examples, sqls))[::step][:SHOWN_EXAMPLES]:
        pred, gold = execute(ex.db_paths[0], sql), execute(ex.db_paths[0], ex.sql)
        shown.append({"db_id": ex.db_id, "question": ex.question, "sql": formatted_sql(sql), "gold": formatted_sql(ex.sql),
                      "rows": pred.rows[:3] if pred.ok else None, "n_rows": len(pred.rows) if pred.ok else 0,
                      "error": pred.error, "correct": pred.ok and gold.ok and sorted(map(repr, pred.rows)) == sorted(map(repr, gold.rows))})
    return {"scores": scores, "n": len(sqls), "databases": databases, "train_databases": len(train_dbs),
            "decode_s": decode_s, "shown": shown}


def _train_db_ids(run_dir: Path, cfg) -> list[dict]:
    from vantage_core.data.pipeline import load_split

    return [{"db_id": e.db_id} for e in load_split(cfg.data, "train").examples]


def _shown_lines(shown: list[dict]) -> list[str]:
    lines = ["A few questions on unseen databases:"]
    for s in shown:
        mark = "correct" if s["correct"] else "wrong"
        lines += [f"  [{s['db_id']}] {s['question']}", f"    SQL:  {s['sql']}",
                  f"    rows: {s['rows']}{' ...' if s['n_rows'] > 3 else ''}" if s["rows"] is not None
                  else f"    error: {s['error']}", f"    ({mark}; gold: {s['gold']})"]
    return lines


def _append_report(run_dir: Path, figures: dict, shown: list[dict]) -> None:
    lines = ["", "## Test on unseen synthetic databases", "",
             f"{figures['test_examples']} questions over {len(figures['test_databases'])} databases that "
             f"neither training ({figures['train_databases']} databases) nor validation used.", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in figures["test"].items()]
    lines += ["", f"Quickstart wall time: {figures['wall_s']:.0f} s (training and validation "
                  f"{figures['train_s']:.0f} s, test decoding {figures['decode_s']:.0f} s).", "",
              "### Generated queries", ""]
    for s in shown:
        lines += [f"- **{s['question']}** (`{s['db_id']}`, {'correct' if s['correct'] else 'wrong'})",
                  f"  - generated: `{s['sql']}`", f"  - gold: `{s['gold']}`",
                  f"  - rows: `{s['rows']}`" + (" ..." if s["n_rows"] > 3 else "") if s["rows"] is not None
                  else f"  - error: {s['error']}"]
    with open(run_dir / "report.md", "a") as f:
        f.write("\n".join(lines) + "\n")
