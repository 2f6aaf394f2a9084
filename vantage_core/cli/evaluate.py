"""``vantage evaluate``: score any system's predictions on a dataset split."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vantage_core.cli.options import config_options, load_from_options
from vantage_core.errors import DataError


def read_predictions(path: str | Path) -> list[str]:
    """Predictions from a file, in order:

    - ``.json``: BIRD's ``{"0": "SQL\\t----- bird -----\\tdb_id", ...}`` or a list of strings;
    - ``.jsonl``: one string, or one object with ``prediction``/``pred``/``sql``/``query``, a line;
    - anything else: Spider's format, one query per line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
        if isinstance(data, dict):
            try:
                items = sorted(data.items(), key=lambda kv: int(kv[0]))
            except ValueError:
                raise DataError(f"{path}: keys must be example indices (BIRD's format)") from None
            return [str(v).split("\t----- bird -----\t")[0] for _, v in items]
        if isinstance(data, list) and all(isinstance(v, str) for v in data):
            return data
        raise DataError(f"{path}: expected BIRD's {{index: SQL}} object or a list of SQL strings")
    if path.suffix == ".jsonl":
        out = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            if isinstance(row, str):
                out.append(row)
                continue
            field = next((k for k in ("prediction", "pred", "sql", "query") if isinstance(row, dict) and k in row), None)
            if field is None:
                raise DataError(f"{path}:{lineno}: expected a string or an object with one of the fields "
                                f"prediction, pred, sql, query")
            out.append(str(row[field]))
        return out
    return text.splitlines()


def _param(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{text!r}: expected KEY=VALUE")
    return key.strip(), yaml.safe_load(value)


def _dataset_params_from(config, dataset: str) -> dict:
    """The parameters the run's config gave ``dataset`` (so a synthetic test split is the same one)."""
    from vantage_core.config import plugin_params

    for source in [*config.data.test, *config.data.validation, *config.data.train]:
        if source.name == dataset:
            return plugin_params(source)
    return {}


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


@click.command()
@click.option("--predictions", "-p", "predictions_path", type=click.Path(dir_okay=False), default=None,
              help="Predictions: one SQL per line (Spider), BIRD's JSON, or JSON lines.")
@click.option("--checkpoint", "checkpoint", type=click.Path(file_okay=False), default=None,
              help="Generate the predictions with this run, checkpoint or export folder instead.")
@click.option("--dataset", "-d", required=True, help="Registered dataset name (see `vantage plugins --kind dataset`).")
@click.option("--split", default="dev", show_default=True, help="Split of the dataset.")
@click.option("--dataset-param", "dataset_params", multiple=True, metavar="KEY=VALUE",
              help="Parameter of the dataset adapter, e.g. --dataset-param root=../shared/data/spider.")
@click.option("--metric", "-m", "metric_names", multiple=True,
              help="Metric to compute (repeatable); default: the config's evaluate.metrics.")
@click.option("--limit", type=int, default=None, help="Score only the first N examples.")
@click.option("--workers", "-j", type=int, default=None, help="Processes (default: evaluate.workers).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: <run dir>/eval-<dataset>-<split>).")
@config_options
def evaluate(predictions_path, checkpoint, dataset, split, dataset_params, metric_names, limit, workers, out_dir,
             **options) -> None:
    """Score a model (--checkpoint) or any system's predictions file against a dataset split.

    Writes the predictions in the official formats, per-example results (results.jsonl), a
    Markdown summary with the breakdown by hardness (summary.md) and a figure (summary.png).
    """
    from vantage_core.config import PluginSpec
    from vantage_core.evaluate.runner import evaluate_predictions
    from vantage_core.plugins import registry

    if (predictions_path is None) == (checkpoint is None):
        raise click.UsageError("give exactly one of --predictions FILE and --checkpoint DIR")
    engine = None
    if checkpoint is not None:
        from vantage_core.inference.engine import load_engine

        engine = load_engine(checkpoint)
        if not options.get("config"):
            # The run's own config: its metrics, and the parameters it gave this dataset.
            options = {**options, "config": str(Path(engine.info["folder"]) / "config.yaml")}
    cfg = load_from_options(options)
    params = dict(_param(p) for p in dataset_params)
    if not params and engine is not None:
        params = _dataset_params_from(engine.config, dataset)
    adapter = registry().build("dataset", dataset, **params)
    report = adapter.load(split)
    click.echo(report.summary(dataset, split), err=True)
    examples = report.examples[:limit] if limit else report.examples
    if engine is not None:
        from vantage_core.inference.engine import predict_examples

        predictions = predict_examples(engine, examples)
        predictions_path = f"{checkpoint}/predictions"
    else:
        predictions = read_predictions(predictions_path)
    if limit:
        predictions = predictions[:limit]
    if len(predictions) != len(examples):
        raise DataError(f"{predictions_path}: {len(predictions)} predictions for {len(examples)} examples of "
                        f"{dataset}/{split}; give one prediction per example, in order")
    specs = [PluginSpec(name=n) for n in metric_names] if metric_names else cfg.evaluate.metrics
    if not specs:
        raise click.UsageError("no metric to compute: the config's evaluate.metrics is empty; "
                               f"name one with --metric ({', '.join(registry().names('metric'))})")
    metrics = build_metrics(specs, cfg.evaluate.timeout_s, cfg.evaluate.max_rows)
    out = Path(out_dir) if out_dir else cfg.run.path / f"eval-{dataset}-{split}"
    result = evaluate_predictions(examples, predictions, metrics, out, workers=workers or cfg.evaluate.workers,
                                  split=split, title=f"{Path(predictions_path).name} on {dataset}/{split}")
    for name, summary in result["summary"].items():
        value = summary.get(name)
        click.echo(f"{name}: {'n/a' if value is None else f'{100 * value:.2f}'} (n={summary.get('n')})")
    click.echo(f"results in {out}")
