"""``vantage analyze``: look inside trained models (the expert-specialization atlas)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from vantage_core.cli.options import options_into


@click.group()
def analyze() -> None:
    """Analyses of trained models."""


@dataclass
class ExpertsOptions:
    """What ``vantage analyze experts`` was given (its options below say what each means)."""

    run_dirs: tuple[str, ...]
    dataset: str
    split: str
    limit: int | None
    out: str | None
    batch_size: int
    shuffles: int
    untrained: bool
    no_plots: bool
    no_progress: bool


@analyze.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--dataset", required=True, help="A registered dataset (see `vantage plugins`), e.g. synthetic, spider.")
@click.option("--split", default="validation", show_default=True, help="The dataset's split to route.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Route only the first N examples.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default: RUN_DIR/analysis/experts-DATASET-SPLIT; with several "
                   "runs, one sub-folder per run plus compare.png).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1))
@click.option("--shuffles", default=5, show_default=True, type=click.IntRange(1),
              help="Shuffled-routing baselines averaged.")
@click.option("--untrained", is_flag=True,
              help="Also route through the same architecture with fresh weights: the specialization "
                   "a router shows before training (token identity alone); doubles the time.")
@click.option("--no-plots", is_flag=True, help="Tables only.")
@click.option("--no-progress", is_flag=True)
@options_into(ExpertsOptions)
def experts(options: ExpertsOptions) -> None:
    """Which experts receive which SQL roles: heatmaps, mutual information, CSV tables.

    RUN_DIRS: one or more run directories (or checkpoint / export folders); with several (for
    example two runs of a sweep) their specialization is also drawn side by side.
    """
    from vantage_core.analysis.atlas import AtlasOptions, analyze_run, plot_comparison

    run_dirs, out = options.run_dirs, options.out
    how = AtlasOptions(limit=options.limit, batch_size=options.batch_size, n_shuffles=options.shuffles,
                       untrained=options.untrained, plots=not options.no_plots, progress=not options.no_progress)
    atlases = []
    names = [Path(r).resolve().name for r in run_dirs]
    if len(set(names)) < len(names):  # two checkpoints called "best": tell them apart by parent
        names = [f"{Path(r).resolve().parent.name}/{n}" for r, n in zip(run_dirs, names)]
    for run_dir, name in zip(run_dirs, names):
        target = None
        if out:
            target = Path(out) / name.replace("/", "-") if len(run_dirs) > 1 else Path(out)
        atlas, files = analyze_run(run_dir, options.dataset, options.split, how, out_dir=target, name=name,
                                   echo=lambda m: click.echo(m, err=True))
        atlases.append(atlas)
        echo_atlas(atlas, files)
    if len(atlases) > 1 and not options.no_plots:
        folder = Path(out) if out else Path(run_dirs[0]) / "analysis"
        folder.mkdir(parents=True, exist_ok=True)
        click.echo(f"comparison: {plot_comparison(atlases, folder / f'compare-{options.dataset}-{options.split}.png')}")


def echo_atlas(atlas, files: dict[str, Path]) -> None:
    """The atlas's headline figures, per MoE layer, and where its files are."""
    click.echo(f"{atlas.name}: {atlas.n_examples} examples, {atlas.n_tokens} SQL tokens in "
               f"{atlas.seconds:.1f} s; H(role) = {atlas.role_entropy:.3f} bits")
    for la in atlas.layers:
        init = "" if la.mi_init is None else f", untrained {la.mi_init:.4f}"
        click.echo(f"  MoE layer {la.layer}: I(expert; role) = {la.mi:.4f} bits (shuffled {la.mi_shuffled:.4f}{init}); "
                   f"I(expert; copied) = {la.mi_copied:.4f} (shuffled {la.mi_copied_shuffled:.4f})")
    click.echo(f"  tables and pictures: {files['summary'].parent}")
