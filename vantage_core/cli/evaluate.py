"""``vantage evaluate``: score any system's predictions on a dataset split."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from vantage_core.cli.options import allow_privileged_option, config_options, options_into
from vantage_core.errors import DataError
from vantage_core.evaluate.runner import build_metrics


def read_predictions(path: str | Path) -> list[str]:
    """Predictions from a file, in order:

    - ``.json``: BIRD's ``{"0": "SQL\\t----- bird -----\\tdb_id", ...}`` or a list of strings;
    - ``.jsonl``: one string, or one object with ``prediction``/``pred``/``sql``/``query``, a line;
    - anything else: Spider's format, one query per line.

    Lines end at ``\n``, ``\r\n`` or ``\r`` only (as the official evaluator reads them): a form
    feed or other separator inside a query stays in that query.
    """
    from vantage_core.textfiles import json_lines, read_utf8, text_lines

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such predictions file")
    text = read_utf8(path)
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
        for lineno, row in json_lines(text, path):
            if isinstance(row, str):
                out.append(row)
                continue
            field = next((k for k in ("prediction", "pred", "sql", "query") if isinstance(row, dict) and k in row), None)
            if field is None:
                raise DataError(f"{path}:{lineno}: expected a string or an object with one of the fields "
                                f"prediction, pred, sql, query")
            out.append(str(row[field]))
        return out
    return text_lines(text)


ALIGN_MODES = ("auto", "order", "row")


def align_predictions(predictions: list[str], report, align: str, where: str) -> list[str]:
    """The predictions for ``report.examples``, one each.

    ``order``: the file holds one prediction per loaded example, in order. ``row``: one per row
    of the split's file, skipped rows included (the loader's ``source_rows`` say which row each
    example came from). ``auto``: ``order`` unless the count matches the file's rows instead.
    """
    examples = report.examples
    rows = getattr(report, "source_rows", None)
    n_rows = len(examples) + sum(report.skipped.values())
    if align == "auto":
        by_row = len(predictions) != len(examples) and rows is not None and len(predictions) == n_rows
        align = "row" if by_row else "order"
    if align == "order":
        if len(predictions) != len(examples):
            hint = f"; the split's file has {n_rows} rows (--align row)" if rows is not None and report.skipped else ""
            raise DataError(f"{where}: {len(predictions)} predictions for {len(examples)} examples; give one "
                            f"prediction per example, in order{hint}")
        return predictions
    if rows is None:
        raise DataError(f"{where}: --align row needs a dataset loader that records the row of each example; "
                        f"this one does not (give one prediction per loaded example)")
    if len(predictions) != n_rows:
        raise DataError(f"{where}: {len(predictions)} predictions, but --align row needs one per row of the "
                        f"split's file ({n_rows})")
    skipped = sorted(set(range(n_rows)) - set(rows))
    if skipped:
        shown = ", ".join(str(r) for r in skipped[:20]) + (" ..." if len(skipped) > 20 else "")
        click.echo(f"aligned by row: the predictions of rows {shown} (0-based) are not scored; the loader "
                   f"skipped those rows (reasons above)", err=True)
    return [predictions[r] for r in rows]


def on_engine(examples: list, template: str) -> list:
    """The examples with their databases replaced by ``template`` filled with each one's db_id."""
    import dataclasses

    from vantage_core.sql.database import url_for

    return [dataclasses.replace(ex, db_paths=[url_for(template, ex.db_id)]) for ex in examples]


def noted_examples(examples: list, template: str | None) -> list:
    """The examples with their databases' notes applied (``--notes`` template, else the file
    beside each database), saying which databases have notes from where."""
    from vantage_core.data.notes import examples_with_notes

    examples, used = examples_with_notes(examples, template)
    if used:
        click.echo("schema notes: " + ", ".join(f"{db} ({path})" for db, path in sorted(used.items())), err=True)
    return examples


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


def refuse_overwriting(predictions: Path, out: Path, split: str) -> None:
    """Refuse an ``--out`` whose results would replace the predictions file being scored."""
    from vantage_core.evaluate.runner import output_files

    if predictions.resolve() in {p.resolve() for p in output_files(out, split)}:
        raise DataError(f"--out {out}: the results would overwrite the predictions being scored, {predictions}; "
                        f"choose another --out (or move the predictions file)")


def in_quantized_form(engine, checkpoints, form: str):
    """``engine``, or the checkpoints loaded again when ``--set inference.quantized`` asks for
    their quantized layers in another form than their config's."""
    from vantage_core.inference.engine import Engine
    from vantage_core.model.quantization import runtime_form

    if not engine.info.get("quantization") or runtime_form(form) == runtime_form(engine.config.inference.quantized):
        return engine
    return Engine.load(list(checkpoints), quantized=form)


@dataclass
class EvaluateOptions:
    """What ``vantage evaluate`` was given (its options below say what each means)."""

    predictions_path: str | None
    checkpoints: tuple[str, ...]
    dataset: str
    split: str
    dataset_params: tuple[str, ...]
    metric_names: tuple[str, ...]
    limit: int | None
    align: str
    workers: int | None
    out_dir: str | None
    execute_on: str | None
    notes: str | None
    no_notes: bool
    config: str | None
    overrides: tuple[str, ...]


@click.command()
@click.option("--predictions", "-p", "predictions_path", type=click.Path(dir_okay=False), default=None,
              help="Predictions: one SQL per line (Spider), BIRD's JSON, or JSON lines.")
@click.option("--checkpoint", "checkpoints", type=click.Path(file_okay=False), multiple=True,
              help="Generate the predictions with this run, checkpoint or export folder instead; "
                   "repeated, with the ensemble of them (their log-probabilities averaged).")
@click.option("--dataset", "-d", required=True, help="Registered dataset name (see `vantage plugins --kind dataset`).")
@click.option("--split", default="dev", show_default=True, help="Split of the dataset.")
@click.option("--dataset-param", "dataset_params", multiple=True, metavar="KEY=VALUE",
              help="Parameter of the dataset adapter, e.g. --dataset-param perturb=synonyms; with --checkpoint, "
                   "on top of the parameters the run's config gave the dataset.")
@click.option("--metric", "-m", "metric_names", multiple=True,
              help="Metric to compute (repeatable); default: the config's evaluate.metrics.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Score only the first N examples.")
@click.option("--align", type=click.Choice(ALIGN_MODES), default="auto", show_default=True,
              help="How predictions match examples: order (one per loaded example), row (one per row of "
                   "the split's file, rows the loader skipped included), auto (row only when that count fits).")
@click.option("--workers", "-j", type=int, default=None, help="Processes (default: evaluate.workers).")
@click.option("--out", "-o", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: <run dir>/eval-<dataset>-<split>).")
@click.option("--execute-on", "execute_on", default=None, metavar="URL-TEMPLATE",
              help="Score execution on another engine: a database URL with {db_id} for each example's database "
                   "(postgresql://user@host/{db_id}, duckdb:///dbs/{db_id}.duckdb; fill them with `vantage data load-into`).")
@click.option("--notes", "notes", default=None, metavar="PATH-TEMPLATE",
              help="With --checkpoint: schema notes per database, a path with {db_id} (notes/{db_id}.notes.yaml; "
                   "docs/databases.md). The file beside each database (shop.sqlite -> shop.notes.yaml) is read too.")
@click.option("--no-notes", "no_notes", is_flag=True,
              help="With --checkpoint: read no notes file (neither --notes nor the files beside the databases).")
@config_options
@allow_privileged_option
@options_into(EvaluateOptions)
def evaluate(options: EvaluateOptions) -> None:
    """Score a model (--checkpoint) or any system's predictions file against a dataset split.

    Writes the predictions in the official formats, per-example results (results.jsonl), a
    Markdown summary with the breakdown by hardness (summary.md) and a figure (summary.png).
    """
    from vantage_core.evaluate.runner import evaluate_predictions

    if (options.predictions_path is None) == (not options.checkpoints):
        raise click.UsageError("give exactly one of --predictions FILE and --checkpoint DIR")
    engine, cfg = engine_and_config(options)
    report = load_dataset(options, engine)
    examples = report.examples[:options.limit] if options.limit else report.examples
    if (options.notes or options.no_notes) and engine is None:
        raise click.UsageError("--notes and --no-notes go with --checkpoint (notes change what the model reads)")
    if options.notes and options.no_notes:
        raise click.UsageError("give at most one of --notes and --no-notes")
    if engine is not None and not options.no_notes:
        examples = noted_examples(examples, options.notes)
    predictions_path, decoding = options.predictions_path, None
    if engine is not None:
        predictions, decoding = decode_examples(engine, examples, options.checkpoints)
        predictions_path = f"{options.checkpoints[0]}/predictions"
    else:
        predictions = read_predictions(predictions_path)
        if not (options.limit and options.align != "row" and len(predictions) != len(report.examples)):
            # one per example (or per row of the file), matched to the loaded examples; then the first N
            predictions = align_predictions(predictions, report, options.align,
                                            f"{predictions_path} ({options.dataset}/{options.split})")
    if options.limit:
        predictions = predictions[:options.limit]
    if len(predictions) != len(examples):
        raise DataError(f"{predictions_path}: {len(predictions)} predictions for {len(examples)} examples of "
                        f"{options.dataset}/{options.split}; give one prediction per example, in order")
    if options.execute_on:  # decoded on SQLite as always; gold and predictions both run on the other engine
        examples = on_engine(examples, options.execute_on)
    metrics = chosen_metrics(options.metric_names, cfg)
    out = Path(options.out_dir) if options.out_dir else cfg.run.path / f"eval-{options.dataset}-{options.split}"
    if not options.checkpoints:
        refuse_overwriting(Path(predictions_path), out, options.split)
    result = evaluate_predictions(examples, predictions, metrics, out, workers=options.workers or cfg.evaluate.workers,
                                  split=options.split,
                                  title=f"{Path(predictions_path).name} on {options.dataset}/{options.split}")
    if decoding is not None:
        (out / "decoding.json").write_text(json.dumps(decoding, indent=2))
    for name, summary in result["summary"].items():
        value = summary.get(name)
        click.echo(f"{name}: {'n/a' if value is None else f'{100 * value:.2f}'} (n={summary.get('n')})")
    click.echo(f"results in {out}")


def engine_and_config(options: EvaluateOptions) -> tuple[Any, Any]:
    """With --checkpoint, the engine of the checkpoints (in the quantized form and with the
    inference settings the config asks for) and the config: the given one, else the run's own,
    else the one an export carries; without, no engine and the given config."""
    from vantage_core.config import load_config

    if not options.checkpoints:
        return None, load_config(options.config, list(options.overrides))
    from vantage_core.inference.engine import Engine

    engine = Engine.load(list(options.checkpoints))
    config = options.config or engine.config_file()  # the run's own: its metrics, its dataset parameters
    if config is None:  # an export: the config it carries in config.json
        cfg = load_config(None, list(options.overrides), base=engine.config.to_dict())
    else:
        cfg = load_config(str(config), list(options.overrides))
    engine = in_quantized_form(engine, options.checkpoints, cfg.inference.quantized)  # --set inference.*
    engine.config = engine.config.model_copy(update={"inference": cfg.inference})
    return engine, cfg


def load_dataset(options: EvaluateOptions, engine: Any) -> Any:
    """The split's load report (its summary said on stderr), from the adapter built with
    --dataset-param on top of the parameters the run gave this dataset."""
    from vantage_core.plugins import registry

    params = dict(_param(p) for p in options.dataset_params)
    if engine is not None:
        params = {**_dataset_params_from(engine.config, options.dataset), **params}
    report = registry().build("dataset", options.dataset, **params).load(options.split)
    click.echo(report.summary(options.dataset, options.split), err=True)
    return report


def decode_examples(engine: Any, examples: list, checkpoints: tuple[str, ...]) -> tuple[list[str], dict]:
    """The engine's SQL for each example, and how the decoding went (decoding.json)."""
    import time
    from collections import Counter

    from vantage_core.inference.engine import predict_examples

    choices: Counter = Counter()
    t0 = time.perf_counter()
    predictions = predict_examples(engine, examples, choices=choices)
    decoding = {"seconds": round(time.perf_counter() - t0, 2), "examples": len(examples),
                "choices": dict(choices), "inference": engine.config.inference.model_dump(mode="json")}
    if len(checkpoints) > 1:
        decoding["ensemble"] = engine.info["ensemble"]
    click.echo(f"decoded {len(examples)} questions in {decoding['seconds']:.1f} s; how each SQL was chosen: "
               + ", ".join(f"{k} {v}" for k, v in sorted(choices.items())), err=True)
    return predictions, decoding


def chosen_metrics(metric_names: tuple[str, ...], cfg: Any) -> list:
    """The metrics --metric names, else the config's evaluate.metrics (a usage error when none)."""
    from vantage_core.config import PluginSpec
    from vantage_core.plugins import registry

    specs = [PluginSpec(name=n) for n in metric_names] if metric_names else cfg.evaluate.metrics
    if not specs:
        raise click.UsageError("no metric to compute: the config's evaluate.metrics is empty; "
                               f"name one with --metric ({', '.join(registry().names('metric'))})")
    return build_metrics(specs, cfg.evaluate.timeout_s, cfg.evaluate.max_rows)
