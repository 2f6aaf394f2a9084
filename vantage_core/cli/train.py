"""``vantage train``, ``vantage adapt``, ``vantage plot``, ``vantage sweep`` and ``vantage quickstart``."""

from __future__ import annotations

import click

from vantage_core.cli.options import FiniteFloat, config_options, load_from_options


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
@click.option("--checkpoint", "-m", "model", required=True, type=click.Path(exists=True, file_okay=False),
              help="The trained model: a run directory, a checkpoint folder or a float `vantage export` folder.")
@click.option("--db", required=True, help="The SQLite file to adapt the model to.")
@click.option("--examples", type=click.Path(exists=True, dir_okay=False), default=None,
              help='Question/SQL pairs over --db, one JSON object per line: {"question": "...", "sql": "..."}. '
                   "Default: none (synthetic pairs only).")
@click.option("--notes", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Schema notes for --db (docs/databases.md). Default: the file beside it (shop.notes.yaml).")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False),
              help="The adapted run's folder; neither the model's folder, nor inside or around it.")
@click.option("--synthetic", default=200, show_default=True, type=click.IntRange(0),
              help="Pairs the synthetic templates write over --db's tables (0: none).")
@click.option("--replay", default=0.2, show_default=True, type=FiniteFloat(0, 1, max_open=True),
              help="Share of each batch drawn from the model's own training data, where it loads (0: none).")
@click.option("--steps", default=200, show_default=True, type=click.IntRange(1))
@click.option("--lr", type=FiniteFloat(0, 1, min_open=True), default=None,
              help="Peak learning rate. Default: 0.3 x the one the model was trained at.")
@click.option("--blend", default=0.5, show_default=True, type=FiniteFloat(0, 1, min_open=True),
              help="The fine-tuned weights' share of the saved ones, the rest the model's own (1: the fine-tuned "
                   "weights alone). A blend keeps most of the gain and forgets less of other databases.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--overwrite", is_flag=True, help="Replace an earlier run at --out, once the adapted one is complete.")
@click.option("--no-progress", is_flag=True)
def adapt(no_progress: bool, **options) -> None:
    """Fine-tune a trained model to one database from a few question/SQL pairs (minutes on a CPU).

    Every pair is checked first (its SQL runs on --db; the model can write it); one that fails is
    named by its line and nothing is written. The result is an ordinary run folder."""
    from vantage_core.train.adapt import AdaptRequest, adapt as run_adapt

    summary = run_adapt(AdaptRequest(**options, progress=not no_progress), echo=lambda m: click.echo(m, err=True))
    record = summary["adapt"]
    click.echo(f"{options['out']}: adapted in {record['wall_s']:.0f} s ({summary['steps']} steps, final loss "
               f"{summary['final_loss']:.4f}); use it as any run: vantage generate -m {options['out']} --db {options['db']}")


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
    if result["curves"]:
        click.echo(f"curves: {result['curves']}")


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
