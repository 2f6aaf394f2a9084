"""``vantage data prepare|stats|download`` and ``vantage tokenizer train``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from vantage_core.cli.options import config_options
from vantage_core.errors import ConfigError, DataError

SLOTS = ("train", "validation", "test")


def _load_data_config(options: dict):
    """The config, with only the data section's plugins checked (these commands need no model,
    metric or logger plugin)."""
    from vantage_core.config import load_config, plugin_params
    from vantage_core.plugins import registry

    cfg = load_config(options.get("config"), list(options.get("overrides") or ()), registry=False)
    reg = registry()
    problems = []
    for slot in SLOTS:
        for i, spec in enumerate(getattr(cfg.data, slot)):
            try:
                problems += [f"data.{slot}.{i}: {p}" for p in reg.check_params("dataset", spec.name, plugin_params(spec))]
            except Exception as exc:  # unknown name: PluginError lists the registered ones
                problems.append(f"data.{slot}.{i}.name: {exc}")
    try:
        problems += [f"data.tokenizer: {p}" for p in
                     reg.check_params("tokenizer", cfg.data.tokenizer.name, plugin_params(cfg.data.tokenizer))]
    except Exception as exc:
        problems.append(f"data.tokenizer.name: {exc}")
    if problems:
        raise ConfigError(f"{options.get('config') or '(defaults)'}: " + "\n".join(problems))
    return cfg


def _tokenizer(cfg, directory: str | None, echo):
    """The tokenizer saved in ``directory`` (default: the run's ``tokenizer/``), trained first
    when there is none yet."""
    from vantage_core.data.pipeline import train_tokenizer
    from vantage_core.data.tokenizer import META_FILE, load_tokenizer

    path = Path(directory) if directory else cfg.run.path / "tokenizer"
    if (path / META_FILE).is_file():
        return load_tokenizer(path), path
    echo(f"no tokenizer in {path}: training one on the training sources")
    return train_tokenizer(cfg.data, path, echo=echo), path


def _token_split(cfg, slot: str, tokenizer, cache: bool = True, echo=None):
    """One slot serialized and tokenized (the rows of ``data.target: tokens``), through the data cache."""
    from vantage_core.data.pipeline import TokenRows, prepare_split

    rows = TokenRows(tokenizer, cfg.data.serialization, cfg.model.max_seq_len)
    return prepare_split(cfg.data, slot, rows, cache=cache, echo=echo)


@click.group()
def data() -> None:
    """Load, cache and inspect the datasets a config names."""


@data.command()
@config_options
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of a saved tokenizer (default: <run dir>/tokenizer, trained when absent).")
@click.option("--no-cache", is_flag=True, help="Re-tokenize even when a cached copy exists.")
def prepare(tokenizer_dir: str | None, no_cache: bool, **options) -> None:
    """Serialize and tokenize every split of the config and cache the result."""
    cfg = _load_data_config(options)
    tok, path = _tokenizer(cfg, tokenizer_dir, click.echo)
    click.echo(f"tokenizer: {path} (vocabulary {tok.vocab_size})")
    for slot in SLOTS:
        if not getattr(cfg.data, slot):
            continue
        p = _token_split(cfg, slot, tok, cache=not no_cache, echo=click.echo)
        state = "read from cache" if p.from_cache else "written"
        click.echo(f"{slot}: {len(p)} examples ready; {state}: {p.cache_file}")


def _pct(values, q) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if len(values) else float("nan")


@data.command()
@config_options
@click.option("--tokenizer", "tokenizer_dir", type=click.Path(file_okay=False), default=None,
              help="Folder of a saved tokenizer (default: <run dir>/tokenizer, trained when absent).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write histograms of the lengths to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats(tokenizer_dir: str | None, plot: str | None, as_json: bool, **options) -> None:
    """Counts per split and source, and token lengths of question, schema and SQL."""
    import numpy as np

    cfg = _load_data_config(options)
    echo = (lambda s: None) if as_json else click.echo
    tok, _ = _tokenizer(cfg, tokenizer_dir, echo)
    out, lengths = {}, {}
    for slot in SLOTS:
        if not getattr(cfg.data, slot):
            continue
        p = _token_split(cfg, slot, tok, echo=echo)
        row = {"examples": len(p), "databases": len({e.db_id for e in p.examples}),
               "sources": [s.to_dict() for s in p.sources]}
        for part in ("n_question", "n_schema", "n_sql", "length"):
            v = p.column(part)
            lengths[(slot, part)] = v
            row[part] = {"median": _pct(v, 50), "p95": _pct(v, 95), "max": int(v.max()) if len(v) else 0}
        row["schemas_cut"] = int(np.count_nonzero(p.column("schema_cut")))
        out[slot] = row
    if as_json:
        click.echo(json.dumps(out, indent=2))
    else:
        for slot, row in out.items():
            click.echo(f"\n{slot}: {row['examples']} examples on {row['databases']} databases; "
                       f"{row['schemas_cut']} schemas cut to max_schema_tokens")
            for s in row["sources"]:
                click.echo(f"  {s['summary']}" + (f"; dropped {s['dropped']}" if s["dropped"] else ""))
            click.echo(f"  {'tokens':<10} {'median':>8} {'p95':>8} {'max':>8}")
            for part in ("n_question", "n_schema", "n_sql", "length"):
                r = row[part]
                click.echo(f"  {part.removeprefix('n_'):<10} {r['median']:>8.0f} {r['p95']:>8.0f} {r['max']:>8}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        parts = ("n_question", "n_schema", "n_sql", "length")
        fig, axes = plt.subplots(1, len(parts), figsize=(4 * len(parts), 3))
        for ax, part in zip(axes, parts):
            for slot in out:
                ax.hist(lengths[(slot, part)], bins=40, alpha=0.6, label=slot)
            ax.set_title(f"{part.removeprefix('n_')} tokens")
            ax.set_xlabel("tokens")
        axes[0].set_ylabel("examples")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(plot, dpi=120)
        echo(f"wrote {plot}")


@data.command()
@click.argument("name")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Folder to write the release to.")
def download(name: str, out_dir: str) -> None:
    """Fetch dataset NAME from its hub (fails at once offline, saying how to use local files)."""
    from vantage_core.plugins import registry

    factory = registry().get("dataset", name).factory
    fetch = getattr(factory, "download", None)
    if fetch is None:
        raise DataError(f"dataset {name!r} has nothing to download (it is generated or read locally)")
    click.echo(fetch(out_dir))


@data.command("load-into")
@click.argument("url")
@click.option("--from", "source", required=True, type=click.Path(exists=True, dir_okay=False),
              help="The SQLite database to copy (a Spider database, say).")
@click.option("--replace", is_flag=True, help="Drop tables of the same names first.")
@click.option("--reader", default=None, metavar="ROLE",
              help="PostgreSQL: also create a login role that may only SELECT these tables.")
def load_into_cmd(url: str, source: str, replace: bool, reader: str | None) -> None:
    """Copy a SQLite database into another engine (duckdb:///f.duckdb, postgresql://user@host/db) with
    its primary and foreign keys, so the same questions can be scored there."""
    from vantage_core.data.load_into import load_into
    from vantage_core.sql.database import describe

    summary = load_into(url, source, replace=replace, reader=reader)
    click.echo(f"{describe(url)}: {summary.line()}")


@click.group()
def tokenizer() -> None:
    """Train the decoder's tokenizer."""


@tokenizer.command("train")
@config_options
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Where to save it (default: <run dir>/tokenizer).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier tokenizer at --out, once the new one is trained.")
def train_cmd(out_dir: str | None, overwrite: bool, **options) -> None:
    """Train the tokenizer data.tokenizer names on the questions, SQL and schemas of data.train."""
    from vantage_core.data.pipeline import train_tokenizer
    from vantage_core.data.tokenizer import META_FILE
    from vantage_core.folders import check_output_folder, new_folder

    cfg = _load_data_config(options)
    out = Path(out_dir) if out_dir else cfg.run.path / "tokenizer"
    check_output_folder(out, overwrite=overwrite, replaceable=lambda d: (d / META_FILE).is_file(), what="tokenizer")
    with new_folder(out) as tmp:  # a run's tokenizer stays as it was until the new one is saved
        tok = train_tokenizer(cfg.data, tmp, echo=click.echo)
    click.echo(f"tokenizer {cfg.data.tokenizer.name}: vocabulary {tok.vocab_size}, saved to {out}")
