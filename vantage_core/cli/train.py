"""``vantage train``, ``vantage plot``, ``vantage sweep`` and ``vantage quickstart``."""

from __future__ import annotations

import click

from vantage_core.cli.options import config_options, load_from_options


@click.command()
@config_options
@click.option("--resume", is_flag=True, help="Continue the run in the config's run directory.")
@click.option("--overwrite", is_flag=True, help="Replace the run directory if it exists.")
@click.option("--no-progress", is_flag=True, help="No progress bar (one line per evaluation only).")
def train(resume: bool, overwrite: bool, no_progress: bool, **options) -> None:
    """Train a model from a config.

    Data parallel over processes or machines with MLX's launcher, for example
    ``mlx.launch -n 2 --backend ring vantage train --config FILE``.
    """
    from vantage_core.train.run import train as run_training

    cfg = load_from_options(options)
    summary = run_training(cfg, resume=resume, overwrite=overwrite, progress=not no_progress,
                           echo=lambda m: click.echo(m, err=True))
    if summary and not summary.get("stopped"):
        click.echo(f"{cfg.run.path}: done; report at {cfg.run.path / 'report.md'}")


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default: RUN_DIR/plots.")
def plot(run_dir: str, out: str | None) -> None:
    """Draw a run's loss curves and expert load per layer over time (PNG)."""
    from vantage_core.train.plot import plot_run

    for path in plot_run(run_dir, out):
        click.echo(str(path))


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Where the runs and the table go (default: runs/sweeps/<sweep name>).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field in every run (after the sweep's own settings).")
@click.option("--overwrite", is_flag=True, help="Retrain runs that already finished.")
@click.option("--no-progress", is_flag=True)
def sweep(file: str, out: str | None, overrides: tuple, overwrite: bool, no_progress: bool) -> None:
    """Run every configuration of an ablation file and compare them (Markdown, CSV, figure)."""
    from vantage_core.train.sweep import run_sweep

    result = run_sweep(file, out_dir=out, overrides=list(overrides), overwrite=overwrite,
                       progress=not no_progress, echo=lambda m: click.echo(m, err=True))
    click.echo(result["markdown"].read_text())
    click.echo(f"table: {result['markdown']}  {result['csv']}\nfigure: {result['figure']}")


@click.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/quickstart", show_default=True)
@click.option("--config", "config", type=click.Path(dir_okay=False), default=None,
              help="Default: the packaged configs/quickstart.yaml.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--overwrite/--no-overwrite", default=True, show_default=True,
              help="Replace an earlier quickstart run in --out.")
@click.option("--no-progress", is_flag=True)
def quickstart(out: str, config: str | None, overrides: tuple, overwrite: bool, no_progress: bool) -> None:
    """Generate synthetic databases, train a tiny MoE model, evaluate it on unseen databases,
    show a few queries with their results, and write a report with plots. No data, no network."""
    from vantage_core.cli.quickstart import run_quickstart

    run_quickstart(out, config=config, overrides=list(overrides), overwrite=overwrite,
                   progress=not no_progress, echo=click.echo)
