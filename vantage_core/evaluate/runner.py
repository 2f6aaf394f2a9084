"""Score (example, prediction) pairs with the configured metrics and write the results.

:func:`score_pairs` scores in order, optionally over worker processes (each scores contiguous
chunks with its own copy of the metrics; every metric's score depends only on its arguments, so
the results are the same for any number of workers). :func:`evaluate_predictions` adds the
outputs people read: the predictions in the official formats, one JSON line per example, a
Markdown summary with the breakdown by hardness, and a figure.
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

from vantage_core.data.example import Example
from vantage_core.errors import ConfigError
from vantage_core.evaluate.metric import HARDNESS_ORDER, Metric

_worker_metrics: list[Metric] = []


def _init_worker(metrics: list[Metric]) -> None:
    global _worker_metrics
    _worker_metrics = metrics


def unscorable_score(metric: Metric, exc: BaseException) -> dict[str, Any]:
    """The score of an example the metric could not score: wrong (0, so it stays in the
    denominator: every example given counts), with the reason."""
    return {metric.key: 0, "unscorable": True, "error": f"unscorable: {type(exc).__name__}: {exc}"}


def _score_chunk(chunk: list[tuple[Example, str]], metrics: list[Metric] | None = None) -> list[dict[str, Any]]:
    metrics = _worker_metrics if metrics is None else metrics
    out = []
    for example, prediction in chunk:
        row = {}
        for m in metrics:
            try:
                row[m.name] = m.score(example, prediction)
            except Exception as exc:  # noqa: BLE001 - one bad example must not stop the run
                row[m.name] = unscorable_score(m, exc)
        out.append(row)
    return out


def resolve_metrics(metrics: Iterable[Any]) -> list[Metric]:
    """Metric objects from objects, names, ``PluginSpec``\\ s or ``{"name", "params"}`` dicts."""
    from vantage_core.plugins import registry

    out = []
    for m in metrics:
        if isinstance(m, str):
            out.append(registry().build("metric", m))
        elif isinstance(m, dict):
            out.append(registry().build("metric", m["name"], **(m.get("params") or {})))
        elif hasattr(m, "score") and hasattr(m, "summarize"):
            out.append(m)
        elif hasattr(m, "name"):  # a PluginSpec
            from vantage_core.config import plugin_params

            out.append(registry().build("metric", m.name, **plugin_params(m)))
        else:
            raise ConfigError(f"evaluate.metrics: cannot use {m!r} as a metric (give a registered name)")
    names = [m.name for m in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"evaluate.metrics: a metric is listed twice: {names}")
    return out


def score_pairs(examples: Sequence[Example], predictions: Sequence[str], metrics: Sequence[Metric],
                workers: int = 1, chunk_size: int = 32, desc: str = "scoring") -> list[dict[str, dict]]:
    """One ``{metric name: per-example fields}`` per pair, in input order."""
    from tqdm import tqdm

    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    pairs = list(zip(examples, predictions))
    chunks = [pairs[i:i + chunk_size] for i in range(0, len(pairs), chunk_size)]
    results: list[dict[str, dict]] = []
    bar = tqdm(total=len(pairs), desc=desc, unit="pair", disable=None)
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            results += _score_chunk(chunk, list(metrics))
            bar.update(len(chunk))
    else:
        import multiprocessing as mp

        # spawn: a clean interpreter per worker (the caller may hold MLX or BLAS threads)
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(list(metrics),)) as pool:
            for chunk, scored in zip(chunks, pool.map(_score_chunk, chunks)):
                results += scored
                bar.update(len(chunk))
    bar.close()
    return results


def summarize(metrics: Sequence[Metric], scores: list[dict[str, dict]]) -> dict[str, dict]:
    return {m.name: m.summarize([s[m.name] for s in scores]) for m in metrics}


# ---------------------------------------------------------------------------------------------
# Outputs

def _one_line(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def output_files(out_dir: str | os.PathLike, split: str = "dev") -> list[Path]:
    """Every file :func:`evaluate_predictions` may write into ``out_dir`` (replacing one there)."""
    names = ("pred.sql", "gold.sql", f"predict_{split}.json", "predictions.jsonl", "results.jsonl",
             "summary.json", "summary.md", "summary.png")
    return [Path(out_dir) / name for name in names]


def write_official_predictions(examples: Sequence[Example], predictions: Sequence[str], out_dir: Path,
                               split: str = "dev") -> list[Path]:
    """Spider: ``pred.sql`` (one query per line) and ``gold.sql`` (query TAB db_id); BIRD:
    ``predict_<split>.json`` ({index: "SQL\\t----- bird -----\\tdb_id"}). Always
    ``predictions.jsonl``."""
    written = []
    sources = {e.source for e in examples}
    if any("spider" in s for s in sources) or not sources - {""}:
        (out_dir / "pred.sql").write_text("".join(_one_line(p) + "\n" for p in predictions))
        (out_dir / "gold.sql").write_text("".join(f"{_one_line(e.sql)}\t{e.db_id}\n" for e in examples))
        written += [out_dir / "pred.sql", out_dir / "gold.sql"]
    if any("bird" in s for s in sources):
        path = out_dir / f"predict_{split}.json"
        path.write_text(json.dumps({str(i): f"{_one_line(p)}\t----- bird -----\t{e.db_id}"
                                    for i, (e, p) in enumerate(zip(examples, predictions))}, indent=2))
        written.append(path)
    with open(out_dir / "predictions.jsonl", "w") as f:
        for e, p in zip(examples, predictions):
            f.write(json.dumps({"db_id": e.db_id, "question": e.question, "prediction": p}) + "\n")
    return written + [out_dir / "predictions.jsonl"]


def _hardness_of(row: dict[str, dict]) -> str | None:
    return next((s["hardness"] for s in row.values() if s.get("hardness")), None)


def markdown_summary(metrics: Sequence[Metric], summary: dict, scores: list[dict], title: str) -> str:
    lines = [f"# {title}", "", f"{len(scores)} examples.", "", "| metric | value | scored |", "|---|---|---|"]
    for m in metrics:
        s = summary[m.name]
        value = s.get(m.name)
        lines.append(f"| {m.name} | {'n/a' if value is None else f'{100 * value:.2f}%'} | {s.get('n', '')} |")
    levels = [h for h in HARDNESS_ORDER if any(_hardness_of(r) == h for r in scores)]
    if levels:
        lines += ["", "## By hardness", "", "| metric | " + " | ".join(f"{h} ({sum(_hardness_of(r) == h for r in scores)})"
                                                                       for h in levels) + " |",
                  "|---|" + "---|" * len(levels)]
        for m in metrics:
            cells = []
            for h in levels:
                values = [r[m.name].get(m.key) for r in scores if _hardness_of(r) == h]
                values = [v for v in values if v is not None]
                cells.append(f"{100 * sum(values) / len(values):.1f}%" if values else "n/a")
            lines.append(f"| {m.name} | " + " | ".join(cells) + " |")
    errors = [r[m.name]["error"] for r in scores for m in metrics if r[m.name].get("error")]
    if errors:
        lines += ["", f"{len(errors)} per-metric errors (see results.jsonl)."]
    return "\n".join(lines) + "\n"


def plot_summary(metrics: Sequence[Metric], scores: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [h for h in HARDNESS_ORDER if any(_hardness_of(r) == h for r in scores)] or []
    groups = ["all"] + levels
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * len(groups) * max(1, len(metrics)) / 2, 3.5))
    width = 0.8 / max(1, len(metrics))
    for k, m in enumerate(metrics):
        values = []
        for g in groups:
            vals = [r[m.name].get(m.key) for r in scores if g == "all" or _hardness_of(r) == g]
            vals = [v for v in vals if v is not None]
            values.append(100 * sum(vals) / len(vals) if vals else 0.0)
        bars = ax.bar([i + (k - (len(metrics) - 1) / 2) * width for i in range(len(groups))], values, width, label=m.name)
        ax.bar_label(bars, [f"{v:.0f}" for v in values], fontsize=7)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_metrics(specs, timeout_s: float, max_rows: int) -> list:
    """Metric objects from config specs; executing metrics get the config's time and row limits
    unless their spec sets them."""
    from vantage_core.config import plugin_params
    from vantage_core.plugins import registry

    metrics = []
    for spec in specs:
        params = dict(plugin_params(spec))
        accepted = registry().get("metric", spec.name).parameters()
        for key, value in (("timeout_s", timeout_s), ("max_rows", max_rows)):
            if key in accepted and key not in params:
                params[key] = value
        metrics.append(registry().build("metric", spec.name, **params))
    return metrics


def evaluate_predictions(examples: Sequence[Example], predictions: Sequence[str], metrics: Iterable[Any],
                         out_dir: str | os.PathLike | None = None, workers: int = 1, split: str = "dev",
                         title: str | None = None) -> dict[str, Any]:
    """Score the predictions and (when ``out_dir`` is given) write ``results.jsonl``,
    ``summary.json``, ``summary.md``, ``summary.png`` and the official prediction files.

    ``metrics``: metric objects, registered names, or ``PluginSpec``\\ s. Returns
    ``{"summary": {metric: summary}, "scores": [per-example rows], "files": [...]}``.
    """
    metrics = resolve_metrics(metrics)
    scores = score_pairs(examples, predictions, metrics, workers=workers)
    for m in metrics:
        if hasattr(m, "close"):
            m.close()
    summary = summarize(metrics, scores)
    result: dict[str, Any] = {"summary": summary, "scores": scores, "files": []}
    if out_dir is None:
        return result
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or f"Evaluation of {len(examples)} predictions"
    files = write_official_predictions(examples, predictions, out, split)
    with open(out / "results.jsonl", "w") as f:
        for i, (e, p, s) in enumerate(zip(examples, predictions, scores)):
            f.write(json.dumps({"index": i, "db_id": e.db_id, "question": e.question, "gold": e.sql,
                                "prediction": p, "hardness": _hardness_of(s), "scores": s}, default=str) + "\n")
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "summary.md").write_text(markdown_summary(metrics, summary, scores, title))
    plot_summary(metrics, scores, out / "summary.png", title)
    result["files"] = files + [out / n for n in ("results.jsonl", "summary.json", "summary.md", "summary.png")]
    return result
