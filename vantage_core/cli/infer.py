"""``vantage generate``, ``vantage serve`` and ``vantage export``."""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import click

from vantage_core.config import DECODING_MODES, DecodingMode
from vantage_core.cli.options import FiniteFloat, allow_privileged_option, options_into, positive_seconds

DECODING = click.Choice(DECODING_MODES)


@dataclass
class DecodingOptions:
    """How to decode, as the command line asked (None: as the model's config says)."""

    decoding: DecodingMode | None
    beam_size: int | None
    constraint: str | None  # a registered constraint, or "none" to turn the config's off
    execution_guided: bool | None
    max_new_tokens: int | None
    temperature: float | None
    top_p: float | None

    def overrides(self) -> dict:
        """These options as overrides of the config's ``inference`` section."""
        out = {"decoding": self.decoding, "beam_size": self.beam_size, "max_new_tokens": self.max_new_tokens,
               "temperature": self.temperature, "top_p": self.top_p}
        if self.constraint is not None:
            out["constraint"] = "none" if self.constraint == "none" else {"name": self.constraint}
        if self.execution_guided is not None:
            out["execution_guided"] = self.execution_guided
        return out


def decoding_options(func):
    """The decoding options, handed to the command as one :class:`DecodingOptions` in ``decoding``."""
    names = [f.name for f in dataclasses.fields(DecodingOptions)]

    @functools.wraps(func)
    def command(**params):
        return func(decoding=DecodingOptions(**{name: params.pop(name) for name in names}), **params)

    for opt in reversed([
        click.option("--decoding", type=DECODING, default=None, help="Default: the model's config (inference.decoding)."),
        click.option("--beam-size", type=click.IntRange(1, 64), default=None),
        click.option("--constraint", default=None, metavar="NAME",
                     help="A registered constraint (sql_schema), or 'none'."),
        click.option("--execution-guided/--no-execution-guided", default=None,
                     help="Pick the first candidate that runs without error."),
        click.option("--max-new-tokens", type=click.IntRange(1, 4096), default=None),
        click.option("--temperature", type=FiniteFloat(0, 10), default=None),
        click.option("--top-p", type=FiniteFloat(0, 1, min_open=True), default=None),
    ]):
        command = opt(command)
    return command


def database_option(value: str | None) -> str | None:
    """A --db value: a database URL as given (its connector checks it on use), or an existing file."""
    from pathlib import Path

    from vantage_core.sql.database import is_url

    if value is None or is_url(value):
        return value
    if not Path(value).is_file():
        raise click.BadParameter(f"{value}: no such SQLite file; give a SQLite file or a database URL "
                                 f"(sqlite:///f.sqlite, duckdb:///f.duckdb, postgresql://user@host/db)")
    return value


def _table(rows: list[list], max_rows: int = 20, width: int = 32) -> str:
    if not rows:
        return "(no rows)"
    cells = [[str(v)[:width] for v in r] for r in rows[:max_rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    if len(rows) > max_rows:
        lines.append(f"... {len(rows) - max_rows} more rows")
    return "\n".join(lines)


@dataclass
class GenerateOptions:
    """What ``vantage generate`` was given (its options below say what each means)."""

    checkpoints: tuple[str, ...]
    db: str
    question: str | None
    questions: str | None
    notes: str | None
    run_sql: bool
    show_candidates: bool
    as_json: bool
    decoding: DecodingOptions


@click.command()
@click.option("--checkpoint", "-m", "checkpoints", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A run directory, a checkpoint folder or a `vantage export` folder; repeated, their ensemble.")
@click.option("--db", required=True, callback=lambda ctx, param, value: database_option(value),
              help="The database: a SQLite file, or a URL (sqlite:///f.sqlite, duckdb:///f.duckdb, "
                   "postgresql://user@host/db).")
@click.argument("question", required=False)
@click.option("--questions", type=click.Path(exists=True, dir_okay=False),
              help="A file of questions, one per line (blank lines and #comments skipped).")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Schema notes for the database (YAML: descriptions, synonyms, value meanings, hidden columns; "
                   "docs/databases.md). Default: the file beside a database file, shop.sqlite -> shop.notes.yaml.")
@click.option("--run", "run_sql", is_flag=True, help="Run the SQL read-only and show the rows.")
@click.option("--candidates", "show_candidates", is_flag=True, help="Show every candidate with its score.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per question.")
@decoding_options
@allow_privileged_option
@options_into(GenerateOptions)
def generate(options: GenerateOptions) -> None:
    """Turn a question about a database (SQLite file or URL) into SQL.

    Exits with status 1 when a question got no SQL or, with --run, its SQL failed to run."""
    from vantage_core.textfiles import text_lines
    from vantage_core.data.notes import notes_beside
    from vantage_core.errors import VantageError
    from vantage_core.inference.engine import Engine
    from vantage_core.textfiles import read_utf8

    asked = [options.question] if options.question else []
    if options.questions:
        lines = text_lines(read_utf8(options.questions))
        asked += [q.strip() for q in lines if q.strip() and not q.lstrip().startswith("#")]
    if not asked:
        raise click.UsageError("give a QUESTION or --questions FILE")
    db = options.db
    engine = Engine.load(list(options.checkpoints))
    opts = engine.options(**options.decoding.overrides())
    if options.notes:
        engine.notes_files[db] = options.notes
    if options.notes or notes_beside(db):
        engine.schema_of(db)  # the notes are read and checked before any question is answered
    failed = 0
    for q in asked:
        try:
            g = engine.generate(q, db_path=db, run=options.run_sql, options=opts)
        except VantageError as exc:
            if len(asked) == 1:
                raise
            click.echo(f"error: {q!r}: {exc}", err=True)
            failed += 1
            continue
        failed += bool(options.run_sql and g.error)
        echo_generation(q, g, options, several=len(asked) > 1)
    if failed:
        raise click.exceptions.Exit(1)


def echo_generation(question: str, g, options: GenerateOptions, several: bool) -> None:
    """One answer as ``vantage generate`` prints it: a JSON object, or the SQL (with the candidates
    and the rows where asked)."""
    if options.as_json:
        d = g.to_json()
        d.pop("tokens", None)
        click.echo(json.dumps({"question": question, **d}, allow_nan=False))
        return
    from vantage_core.sql.format import formatted_sql

    if several:
        click.echo(f"-- {question}")
    click.echo(formatted_sql(g.sql))
    if g.executed_sql:  # what ran on the database's own engine
        click.echo(f"-- as run on {g.dialect}: {g.executed_sql}", err=True)
    if options.show_candidates:
        for i, c in enumerate(g.candidates):
            mark = "*" if i == g.chosen else " "
            extra = "" if c.ok is None else (" ran" if c.ok else f" error: {c.error}")
            click.echo(f"  {mark} {c.logprob:9.3f}  {formatted_sql(c.sql)}{extra}", err=True)
    if options.run_sql:
        if g.error:
            click.echo(f"error: the SQL did not run: {g.error}", err=True)
        else:
            click.echo(_table(g.rows or []))


@dataclass
class ServeOptions:
    """What ``vantage serve`` was given (its options below say what each means)."""

    checkpoints: tuple[str, ...]
    host: str
    port: int
    db_dir: tuple[str, ...]
    db_urls: tuple[str, ...]
    notes: tuple[str, ...]
    max_concurrency: int
    timeout_s: float
    max_schema_items: int
    adapt_dir: str | None
    adapt_steps: int
    adapt_blend: float


@click.command()
@click.option("--checkpoint", "-m", "checkpoints", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="A run, checkpoint or export folder; repeated, their ensemble.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--db-dir", type=click.Path(exists=True, file_okay=False), multiple=True,
              help="Folders of known databases (<db_id>/<db_id>.sqlite or <db_id>.sqlite); repeatable.")
@click.option("--db", "db_urls", multiple=True, metavar="[NAME=]URL",
              help="A database by URL (or SQLite path), known by NAME or by its own name; repeatable.")
@click.option("--notes", "notes", multiple=True, metavar="NAME=FILE",
              help="Schema notes for the served database NAME (docs/databases.md); repeatable. A database file's "
                   "notes are also read from the file beside it (shop.sqlite -> shop.notes.yaml).")
@click.option("--max-concurrency", default=4, show_default=True, type=click.IntRange(1, 256),
              help="Requests waiting or running at once; more get 503.")
@click.option("--timeout", "timeout_s", default=30.0, show_default=True, type=positive_seconds(),
              help="Seconds a request may take, waiting included (504 beyond); a finite number above 0.")
@click.option("--max-schema-items", default=1000, show_default=True, type=click.IntRange(1),
              help="Tables and columns a request's schema may have in all; larger ones get 400.")
@click.option("--adapt-dir", type=click.Path(file_okay=False), default=None,
              help="Let the playground save corrected question/SQL pairs and adapt the model to a served SQLite "
                   "database (docs/adapt.md): each database's examples and adapted run are kept here. Default: off.")
@click.option("--adapt-steps", default=200, show_default=True, type=click.IntRange(1),
              help="Steps of each adaptation started from the playground (vantage adapt --steps).")
@click.option("--adapt-blend", default=0.5, show_default=True, type=FiniteFloat(0, 1, min_open=True),
              help="The fine-tuned weights' share of each adapted model started from the playground "
                   "(vantage adapt --blend; 1: the fine-tuned weights alone).")
@allow_privileged_option
@options_into(ServeOptions)
def serve(options: ServeOptions) -> None:
    """Serve the model over HTTP (OpenAPI document at /docs, playground at /, and the OpenAI-compatible
    /v1/models and /v1/chat/completions)."""
    from vantage_core.inference.serve import ServeSettings, create_app, run_server

    settings = ServeSettings(db_dirs=list(options.db_dir), db_urls=list(options.db_urls), notes=list(options.notes),
                             max_concurrency=options.max_concurrency, timeout_s=options.timeout_s,
                             max_schema_items=options.max_schema_items)
    learner = adapt_jobs(options) if options.adapt_dir else None
    run_server(create_app(list(options.checkpoints), settings, learner), settings, options.host, options.port)


def adapt_jobs(options: ServeOptions):
    """What adapts the served model from the playground (``--adapt-dir``)."""
    from vantage_core.train.adapt_jobs import AdaptJobs, AdaptSettings

    if len(options.checkpoints) > 1:
        raise click.UsageError("--adapt-dir adapts one model; serve a single --checkpoint to adapt it")
    return AdaptJobs(options.checkpoints[0], AdaptSettings(folder=options.adapt_dir, steps=options.adapt_steps,
                                                                   blend=options.adapt_blend))


@click.command()
@click.option("--checkpoint", "-m", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False))
@click.option("--quantize", type=click.Choice(["4", "8"]), default=None, help="Quantize to 4 or 8 bits (MLX).")
@click.option("--group-size", default=64, show_default=True, type=click.Choice(["32", "64", "128"]))
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier export at --out, once the new one is complete.")
@decoding_options
def export(checkpoint, out, quantize, group_size, overwrite, decoding: DecodingOptions) -> None:
    """Write a self-contained model folder: config.json, model.safetensors, vantage_tokenizer/, a model card.

    --out may not be, contain or lie inside --checkpoint."""
    from vantage_core.inference.export import export_model

    inference = {k: v for k, v in decoding.overrides().items() if v is not None}
    if inference.get("constraint") == "none":
        inference["constraint"] = None
    rec = export_model(checkpoint, out, bits=int(quantize) if quantize else None, group_size=int(group_size),
                       overwrite=overwrite, inference=inference or None)
    q = rec["quantization"]
    click.echo(f"{out}: {rec['parameter_bytes'] / 1e6:.2f} MB of parameters"
               + (f" ({q['bits']}-bit, {q['layers']} layers; float: {rec['float_parameter_bytes'] / 1e6:.2f} MB)" if q else ""))
