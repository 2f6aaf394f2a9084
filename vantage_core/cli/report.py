"""``vantage report``: one Markdown page with figures from evaluated runs."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

TITLE = "Evaluation report"


@click.command()
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False), default=None,
              help="The folder for report.md and its PNG figures (default: a folder 'report' beside the first "
                   "RUN); it may not be, contain or lie inside a RUN.")
@click.option("--title", default=TITLE, show_default=True, help="The page's title.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier report in --out (a folder holding only "
                                                "report.md and PNG files).")
def report(runs: tuple[str, ...], out: str | None, title: str, overwrite: bool) -> None:
    """Tables and figures from evaluated runs: each run's scores, each system's mean ± std, paired
    differences, ensembles against their members, other evaluations, and why wrong answers are wrong.

    RUN: a run folder with its evaluation in RUN/eval (`vantage evaluate --checkpoint RUN --out
    RUN/eval ...`), or an ensemble's folder with only eval/. RUN/eval_NAME folders (other decodings
    or splits) get a table of their own. Runs named SYSTEM_seedN (or SYSTEMN) are seeds of one
    system; each other system is compared seed by seed with the first RUN's. Reads only: nothing
    is trained or decoded.
    """
    from vantage_core.analysis.report import read_runs, write_report

    found = read_runs(list(runs))
    target = out if out is not None else str(Path(runs[0]).resolve().parent / "report")
    titled = ["--title", title] if title != TITLE else []
    command = shlex.join(["vantage", "report", *runs, "-o", out if out is not None else target, *titled])
    page = write_report(found, target, command=command, title=title, overwrite=overwrite)
    click.echo(f"{page}: {len(found)} run{'s' if len(found) > 1 else ''}")
