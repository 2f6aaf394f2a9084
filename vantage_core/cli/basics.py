"""``vantage plugins``, ``vantage config validate|show`` and ``vantage doctor``."""

from __future__ import annotations

import json

import click

from vantage_core.cli.options import config_options, load_from_options


@click.command()
@click.option("--kind", help="Only this kind (router, expert, dataset, ...).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(kind: str | None, as_json: bool) -> None:
    """List every registered plugin: name, kind, distribution and version."""
    from vantage_core.plugins import registry

    entries = registry().entries(kind)
    rows = [{"kind": e.kind, "name": e.name, "distribution": e.distribution, "version": e.version,
             "plugin": e.plugin, "description": e.description.replace("``", "")} for e in entries]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    headers = ["kind", "name", "distribution", "version", "description"]
    widths = {h: max([len(h)] + [len(str(r[h])) for r in rows]) for h in headers[:-1]}
    click.echo("  ".join(h.upper().ljust(widths.get(h, 0)) for h in headers).rstrip())
    for r in rows:
        r = {**r, "description": _clip(r["description"], 60)}
        click.echo("  ".join(str(r[h]).ljust(widths.get(h, 0)) for h in headers).rstrip())


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


@click.group()
def config() -> None:
    """Check and print configs."""


@config.command()
@config_options
def validate(**options) -> None:
    """Load a config with its overrides and check every field and plugin, without running anything.
    A sweep file (one with a ``base``) is checked run by run."""
    from vantage_core.config import is_sweep_file, iter_plugin_specs

    if options["config"] and is_sweep_file(options["config"]):
        configs = sweep_run_configs(options)
        n = sum(1 for c in configs for _ in iter_plugin_specs(c))
        click.echo(f"{options['config']}: valid sweep ({len(configs)} runs, {n} plugin specs checked)")
        return
    n = sum(1 for _ in iter_plugin_specs(load_from_options(options)))
    click.echo(f"{options['config'] or '(defaults)'}: valid ({n} plugin specs checked)")


def sweep_run_configs(options: dict) -> list:
    """Every run's config of a sweep file, with the command's overrides last (as `vantage sweep`
    applies them); a bad value is named with the sweep file and the run."""
    from vantage_core.config import expand_sweep, load_config
    from vantage_core.errors import ConfigError

    base, _, runs = expand_sweep(options["config"])
    configs = []
    for r in runs:
        try:
            configs.append(load_config(base, list(r.overrides) + list(options.get("overrides") or ())))
        except ConfigError as exc:
            raise ConfigError(f"{options['config']}: run {r.name!r}: {exc}") from None
    return configs


@config.command()
@config_options
def show(**options) -> None:
    """Print the resolved config (defaults filled in, overrides applied) as YAML."""
    from vantage_core.config import dump_config

    click.echo(dump_config(load_from_options(options)), nl=False)


@click.command()
@click.option("--size", default=1024, show_default=True, type=click.IntRange(1, 16384),
              help="Matrix size for the sgemm check.")
def doctor(size: int) -> None:
    """Check the installation: MLX, its device, the BLAS in use and its sgemm rate."""
    from vantage_core.cli import doctor as d

    for line in d.report(size):
        click.echo(line)
