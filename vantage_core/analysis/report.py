"""A Markdown page and PNG figures from evaluated runs: what ``vantage report RUN... -o DIR`` writes.

Reads, and never trains or decodes. A run is a folder holding ``eval/summary.json``, as
``vantage evaluate --out RUN/eval`` writes it: a training run (its ``summary.json`` and
``metrics.jsonl`` add the steps, the minutes and the training curves) or the folder of an
ensemble (``eval/decoding.json`` lists the member checkpoints). A run's further evaluations,
``RUN/eval_<name>/`` (another decoding, another split), get a table of their own.

Runs named ``<system>_seed<N>`` (or ``<system><N>``) are seeds of one system. The page gives each
run's figures; each system's mean ± sample standard deviation; each other system's paired
difference from the first one, on the seeds both have; each ensemble beside its members' mean;
and why the wrong answers are wrong (:func:`error_breakdown`).

    runs = read_runs(["runs/spider_seed0", "runs/spider_seed1"])
    write_report(runs, "reports/spider", command="vantage report ...")
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vantage_core.errors import DataError
from vantage_core.evaluate.metric import HARDNESS_ORDER
from vantage_core.folders import check_output_folder, new_folder, refuse_overlap
from vantage_core.textfiles import json_lines, read_utf8

REPORT_FILE = "report.md"
LABELS = {"execution": "EX", "exact_match": "EM", "valid_sql": "valid SQL"}
SEEDED = re.compile(r"(?P<system>.+?)[_-]?(?:seed)?(?P<seed>\d+)")
ERROR_KINDS = ("gold joins, prediction does not", "other number of SELECT items", "fewer SELECT items",
               "GROUP BY differs", "gold string value not in the question", "unparsed")


@dataclass
class Evaluation:
    """One ``vantage evaluate`` output folder: its ``summary.json`` and ``decoding.json``."""

    folder: Path
    summary: dict
    decoding: dict

    def percent(self, metric: str, hardness: str | None = None) -> float | None:
        """The metric's value in percent (overall or at one hardness level); None where absent."""
        section = self.summary.get(metric) or {}
        if hardness is not None:
            section = (section.get("by_hardness") or {}).get(hardness) or {}
        value = section.get(metric)
        return 100 * value if isinstance(value, (int, float)) else None

    def questions(self) -> int | None:
        """How many questions were scored (decoded, for a model's evaluation)."""
        if isinstance(self.decoding.get("examples"), int):
            return self.decoding["examples"]
        counts = [s.get("n", 0) + s.get("unscored", 0) for s in self.summary.values() if isinstance(s, dict)]
        return max(counts, default=None)


@dataclass
class Run:
    """A run folder: its main evaluation, its training summary ({} for an ensemble) and the
    system and seed its name gives."""

    name: str
    folder: Path
    evaluation: Evaluation
    training: dict = field(default_factory=dict)
    others: dict[str, Evaluation] = field(default_factory=dict)
    system: str = ""
    seed: int | None = None

    @property
    def members(self) -> list[str]:
        """The runs an ensemble's checkpoints belong to; empty for a single model."""
        folders = self.evaluation.decoding.get("ensemble") or []
        return [member_run(f) for f in folders] if len(folders) > 1 else []


# ---------------------------------------------------------------------------------------------
# Reading

def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when the file is absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_evaluation(folder: Path) -> Evaluation | None:
    """The evaluation in ``folder``; None when it holds no ``summary.json``."""
    summary = read_json(folder / "summary.json")
    return None if summary is None else Evaluation(folder, summary, read_json(folder / "decoding.json") or {})


def member_run(folder: str) -> str:
    """The run a member checkpoint belongs to (``runs/spider_seed0/checkpoints/best`` -> ``spider_seed0``)."""
    parts = Path(folder).parts
    return parts[parts.index("checkpoints") - 1] if "checkpoints" in parts[1:] else Path(folder).name


def system_and_seed(name: str, folder: Path) -> tuple[str, int | None]:
    """``spider_seed3`` -> (``spider``, 3); a name without a number: the run config's seed, if any."""
    match = SEEDED.fullmatch(name)
    if match:
        return match["system"], int(match["seed"])
    config = folder / "config.yaml"
    if config.is_file():
        import yaml

        try:
            seed = ((yaml.safe_load(read_utf8(config)) or {}).get("run") or {}).get("seed")
        except (yaml.YAMLError, AttributeError):
            seed = None
        return name, seed if isinstance(seed, int) else None
    return name, None


def read_run(path: str | Path, name: str | None = None) -> Run:
    """The run in folder ``path``; a :class:`DataError` when it is missing or was never evaluated."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{path}: no such run folder; give a folder that `vantage train` wrote, with its "
                        f"evaluation in eval/")
    evaluation = read_evaluation(folder / "eval")
    if evaluation is None:
        raise DataError(f"{path}: no evaluation (no eval/summary.json); score the run first: "
                        f"vantage evaluate --checkpoint {path} --dataset NAME --split SPLIT --out {folder / 'eval'}")
    name = name or folder.resolve().name
    others = {}
    for sub in sorted(folder.glob("eval_*")):
        other = read_evaluation(sub) if sub.is_dir() else None
        if other is not None:
            others[sub.name.removeprefix("eval_")] = other
    system, seed = system_and_seed(name, folder)
    return Run(name, folder, evaluation, read_json(folder / "summary.json") or {}, others, system, seed)


def read_runs(paths: list[str]) -> list[Run]:
    """Every run of ``paths``, each read once; runs whose folders share a name are told apart by
    their parent folder's name."""
    seen: dict[Path, str] = {}
    for path in paths:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise DataError(f"{path}: the same run as {seen[resolved]}, given twice; give each run once")
        seen[resolved] = path
    names = [p.name for p in seen]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in seen]
    return [read_run(path, name) for path, name in zip(paths, names)]


# ---------------------------------------------------------------------------------------------
# Figures

def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def metrics_of(runs: list[Run]) -> list[str]:
    """The metrics the runs' main evaluations report, in the order the first one lists them."""
    names: list[str] = []
    for run in runs:
        names += [m for m, s in run.evaluation.summary.items() if isinstance(s, dict) and m not in names]
    return names


def by_hardness(runs: list[Run], metrics: list[str]) -> list[str]:
    """The metrics with a breakdown by hardness in some run's main evaluation."""
    return [m for m in metrics if any((r.evaluation.summary.get(m) or {}).get("by_hardness") for r in runs)]


def systems(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs by system, systems in the order their first run was given."""
    out: dict[str, list[Run]] = {}
    for run in runs:
        out.setdefault(run.system, []).append(run)
    return out


def error_breakdown(results: Path) -> dict[str, int]:
    """Why the wrong answers of an evaluation (its ``results.jsonl``) are wrong, from the shape of
    the gold and predicted queries (an answer can fall under several): joins left out, another
    number of SELECT items, GROUP BY differs, a gold string value the question does not spell.
    An answer is wrong when its ``execution`` score is 0; empty without that metric."""
    out = Counter({"wrong": 0, **{k: 0 for k in ERROR_KINDS}})
    for _, row in json_lines(read_utf8(results), results):
        execution = (row.get("scores") or {}).get("execution") if isinstance(row, dict) else None
        if not isinstance(execution, dict):
            return {}  # not scored by execution: no verdict to break down
        if execution.get("exec") != 0:  # right, or not scored (None)
            continue
        out["wrong"] += 1
        gold, pred = query_shape(row.get("gold", "")), query_shape(row.get("prediction", ""))
        if gold is None or pred is None:
            out["unparsed"] += 1
            continue
        out["gold joins, prediction does not"] += gold["joins"] > 0 and pred["joins"] == 0
        out["other number of SELECT items"] += gold["items"] != pred["items"]
        out["fewer SELECT items"] += gold["items"] > pred["items"]
        out["GROUP BY differs"] += gold["group"] != pred["group"]
        out["gold string value not in the question"] += any(
            not re.search(rf"(?<!\w){re.escape(v.strip('%'))}(?!\w)", row.get("question", ""), re.IGNORECASE)
            for v in gold["strings"])
    return dict(out)


def query_shape(sql: str) -> dict | None:
    """Joins, first SELECT's item count, GROUP BY names and string values of a query; None when
    sqlglot cannot read it."""
    import sqlglot
    from sqlglot import exp

    try:
        tree = sqlglot.parse_one(sql, read="sqlite")
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError, RecursionError):
        return None
    if tree is None:
        return None
    selects = list(tree.find_all(exp.Select))
    return {"joins": sum(1 for _ in tree.find_all(exp.Join)),
            "items": len(selects[0].expressions) if selects else 0,
            "group": sorted(g.alias_or_name.lower() for sel in selects if sel.args.get("group")  # names, not aliases
                            for g in sel.args["group"].expressions),
            "strings": [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string]}


# ---------------------------------------------------------------------------------------------
# Tables

def cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def spread(values: list[float | None]) -> str:
    """``mean ± std`` of the values, or n/a when one is missing."""
    if not values or any(v is None for v in values):
        return "n/a"
    return "{:.1f} ± {:.1f}".format(*mean_std(values))


def row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def header(cells: list[str]) -> list[str]:
    return [row(cells), "|" + "---|" * len(cells)]


def score_columns(metrics: list[str], levels: list[str]) -> list[str]:
    first = [m for m in metrics if m in levels][:1]
    return [LABELS.get(m, m) for m in metrics] + [f"{LABELS.get(m, m)} {h}" for m in first for h in HARDNESS_ORDER]


def scores(ev: Evaluation, metrics: list[str], levels: list[str]) -> list[float | None]:
    """The figures of :func:`score_columns` for one evaluation."""
    first = [m for m in metrics if m in levels][:1]
    return [ev.percent(m) for m in metrics] + [ev.percent(m, h) for m in first for h in HARDNESS_ORDER]


def minutes(run: Run) -> str:
    wall = run.training.get("wall_s")
    return f"{wall / 60:.1f}" if isinstance(wall, (int, float)) else ""


def decoding_seconds(ev: Evaluation) -> str:
    seconds = ev.decoding.get("seconds")
    return f"{seconds:.0f}" if isinstance(seconds, (int, float)) else ""


def fallbacks(ev: Evaluation) -> str:
    """How many answers were the counted fallback; empty for predictions not decoded by Vantage."""
    choices = ev.decoding.get("choices")
    return str(choices.get("fallback", 0)) if isinstance(choices, dict) else ""


def steps(run: Run) -> str:
    return str(run.training.get("steps", "-"))


def runs_table(runs: list[Run], metrics: list[str], levels: list[str]) -> list[str]:
    """One row per run (ensembles excluded), each system's mean ± std after its runs."""
    lines = header(["run", "seed", "steps", "run minutes", "questions", *score_columns(metrics, levels),
                    "decoding s", "fallback answers"])
    for system, members in systems(runs).items():
        for run in members:
            ev = run.evaluation
            lines.append(row([run.name, "" if run.seed is None else run.seed, steps(run),
                              minutes(run), ev.questions() or "", *map(cell, scores(ev, metrics, levels)),
                              decoding_seconds(ev), fallbacks(ev)]))
        if len(members) > 1:
            columns = zip(*(scores(r.evaluation, metrics, levels) for r in members))
            lines.append(row([f"**{system}: mean ± std ({len(members)} runs)**", "", "", "", "",
                              *(spread(list(c)) for c in columns), "", ""]))
    return lines


def paired_table(reference: list[Run], other: list[Run], metrics: list[str]) -> list[str]:
    """The runs of ``other`` beside the run of ``reference`` with the same seed, and the mean of
    their differences (other - reference); empty when no seed is shared."""
    ref_name, other_name = reference[0].system, other[0].system
    by_seed = {r.seed: r for r in reference if r.seed is not None}
    pairs = [(by_seed[o.seed], o) for o in other if o.seed in by_seed]
    if not pairs:
        return []
    labels = [LABELS.get(m, m) for m in metrics]
    lines = header(["seed", f"steps ({ref_name} / {other_name})",
                    *(f"{lab} {side}" for lab in labels for side in (ref_name, other_name))])
    diffs: dict[str, list[float | None]] = {m: [] for m in metrics}
    for ref, oth in pairs:
        figures = []
        for m in metrics:
            a, b = ref.evaluation.percent(m), oth.evaluation.percent(m)
            figures += [cell(a), cell(b)]
            diffs[m].append(None if a is None or b is None else b - a)
        lines.append(row([ref.seed, f"{steps(ref)} / {steps(oth)}", *figures]))
    means = [f"**{np.mean(d):+.1f}**" if d and None not in d else "n/a" for d in diffs.values()]
    lines.append(row([f"**{other_name} - {ref_name}** ({len(pairs)} paired)", "",
                      *(x for mean in means for x in (mean, ""))]))
    return lines


def ensemble_table(ensembles: list[Run], singles: dict[str, Run], metrics: list[str]) -> list[str]:
    """One row per ensemble: its figures, its members' mean and the gain over that mean."""
    labels = [LABELS.get(m, m) for m in metrics]
    lines = header(["ensemble", "members", "members' steps", "questions", *labels, *(f"members' mean {lab}" for lab in labels),
                    *(f"gain {lab}" for lab in labels), "decoding s"])
    for run in ensembles:
        known = [singles[m] for m in run.members if m in singles]
        own = [run.evaluation.percent(m) for m in metrics]
        alone = [mean_or_none([k.evaluation.percent(m) for k in known]) for m in metrics]
        gain = [f"{a - b:+.1f}" if a is not None and b is not None else "n/a" for a, b in zip(own, alone)]
        lines.append(row([run.name, ", ".join(run.members), " / ".join(steps(k) for k in known),
                          run.evaluation.questions() or "", *map(cell, own), *map(cell, alone), *gain, decoding_seconds(run.evaluation)]))
    return lines


def mean_or_none(values: list[float | None]) -> float | None:
    return None if not values or None in values else float(np.mean(values))


def others_table(runs: list[Run], metrics: list[str], levels: list[str]) -> list[str]:
    """Every further evaluation (``eval_<name>``) of every run, with what it changed."""
    lines = header(["run", "evaluation", "differs from eval/ by", "questions", *score_columns(metrics, levels),
                    "decoding s"])
    for run in runs:
        for name, ev in run.others.items():
            lines.append(row([run.name, name, difference(run.evaluation, ev), ev.questions() or "",
                              *map(cell, scores(ev, metrics, levels)), decoding_seconds(ev)]))
    return lines


def difference(main: Evaluation, other: Evaluation) -> str:
    """The decoding settings ``other`` changed from ``main`` (``beam_size 8``), its question count
    where that changed, or ``the same decoding``."""
    before, after = main.decoding.get("inference") or {}, other.decoding.get("inference") or {}
    changed = [f"{k} {json.dumps(after.get(k))}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    if main.questions() != other.questions():
        changed.append(f"{other.questions()} questions")
    return ", ".join(changed) or "the same decoding"


def errors_table(runs: list[Run]) -> list[str]:
    """Why each run's wrong answers are wrong, a column per run; empty without execution scores."""
    found = {r.name: error_breakdown(r.evaluation.folder / "results.jsonl") for r in runs
             if (r.evaluation.folder / "results.jsonl").is_file()}
    found = {name: counts for name, counts in found.items() if counts}
    if not found:
        return []
    lines = header(["wrong answers", *found])
    lines.append(row(["wrong in all", *(c["wrong"] for c in found.values())]))
    return lines + [row([kind, *(c[kind] for c in found.values())]) for kind in ERROR_KINDS]


def choices_table(runs: list[Run]) -> list[str]:
    """How each run's answers were chosen (``decoding.json``'s counts); empty when none says."""
    chosen = {r.name: r.evaluation.decoding.get("choices") for r in runs if r.evaluation.decoding.get("choices")}
    if not chosen:
        return []
    kinds = sorted({k for c in chosen.values() for k in c})
    return header(["decoded run", *kinds]) + [row([name, *(c.get(k, 0) for k in kinds)]) for name, c in chosen.items()]


# ---------------------------------------------------------------------------------------------
# Plots

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_by_hardness(runs: list[Run], metrics: list[str], path: Path) -> Path:
    """Each system's mean (± std over its runs) of each metric, overall and by hardness."""
    plt = _pyplot()
    groups = systems(runs)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 3.6), squeeze=False)
    x = np.arange(len(HARDNESS_ORDER) + 1)
    width = 0.8 / len(groups)
    for ax, m in zip(axes[0], metrics):
        for k, (system, members) in enumerate(groups.items()):
            stats = [mean_std([v or 0.0 for v in (r.evaluation.percent(m, h) for r in members)])
                     for h in (None, *HARDNESS_ORDER)]
            ax.bar(x + (k - (len(groups) - 1) / 2) * width, [s[0] for s in stats], width,
                   yerr=[s[1] for s in stats], capsize=3, label=f"{system} ({len(members)})")
        ax.set_xticks(x, ["all", *HARDNESS_ORDER])
        ax.set_ylim(0, 100)
        ax.set_ylabel(f"{LABELS.get(m, m)}, % of questions")
        ax.legend(fontsize=7)
    fig.suptitle("mean ± std over each system's runs", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_training(runs: list[Run], path: Path) -> Path:
    """Training cross-entropy (smoothed) and the metric that picked each run's best checkpoint."""
    from vantage_core.train.plot import moving_mean
    from vantage_core.train.telemetry import read_metrics

    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for run in runs:
        records = read_metrics(run.folder)
        train = [r for r in records if r.get("kind") == "train" and isinstance(r.get("ce"), (int, float))]
        evals = [r for r in records if r.get("kind") == "eval"]
        window = max(1, min(50, len(train) // 10))
        ce = moving_mean(np.asarray([r["ce"] for r in train], dtype=np.float64), window)
        line, = ax.plot([r["step"] for r in train], ce, lw=0.8, label=run.name)
        if any("heldout_ce" in r for r in evals):
            ax.plot([r["step"] for r in evals if "heldout_ce" in r], [r["heldout_ce"] for r in evals if "heldout_ce" in r],
                    "--", color=line.get_color())
        best = (run.training.get("best") or {}).get("metric")
        points = [(r["step"], 100 * r[best]) for r in evals if isinstance(r.get(best), (int, float))]
        if points:
            ax2.plot(*zip(*points), color=line.get_color(), label=f"{run.name}: {best}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (training, moving mean; dashed: held-out)", fontsize=7)
    ax.legend(fontsize=6, ncol=2)
    ax2.set_xlabel("step")
    ax2.set_ylabel("validation metric picking the checkpoint, %", fontsize=7)
    if ax2.lines:
        ax2.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_systems(runs: list[Run], metric: str, path: Path) -> Path:
    """One bar per system: the mean of ``metric`` over its runs, the standard deviation as error bar."""
    plt = _pyplot()
    groups = systems(runs)
    names = list(groups)[::-1]
    stats = [mean_std([r.evaluation.percent(metric) or 0.0 for r in groups[n]]) for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.45 * len(names)))
    ax.barh([f"{n} ({len(groups[n])})" for n in names], [s[0] for s in stats], xerr=[s[1] for s in stats], capsize=3)
    ax.set_xlabel(f"{LABELS.get(metric, metric)}, % of questions (mean ± std over the runs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# The page

def report_sections(runs: list[Run], figures: Path) -> list[str]:
    """The page's Markdown lines after its title, drawing the figures into ``figures``."""
    singles = [r for r in runs if not r.members]
    ensembles = [r for r in runs if r.members]
    metrics = metrics_of(runs)
    levels = by_hardness(runs, metrics)
    lines = []
    if singles:
        lines += ["## Runs", "", *runs_table(singles, metrics, levels), ""]
        if levels:
            plot_by_hardness(singles, levels, figures / "by_hardness.png")
            lines += ["![figures by hardness](by_hardness.png)", ""]
        trained = [r for r in singles if (r.folder / "metrics.jsonl").is_file()]
        if trained:
            plot_training(trained, figures / "training.png")
            lines += ["![training curves](training.png)", ""]
    groups = systems(singles)
    if len(groups) > 1 and metrics:
        plot_systems(singles, metrics[0], figures / "systems.png")
        lines += ["## Systems", "", "![systems](systems.png)", ""]
        reference = next(iter(groups.values()))
        for other in list(groups.values())[1:]:
            paired = paired_table(reference, other, metrics)
            if paired:
                lines += [f"### {other[0].system} against {reference[0].system}, seed by seed", "", *paired, ""]
    if ensembles:
        lines += ["## Ensembles", "", "Each decoded as one model (`vantage evaluate` with `--checkpoint` repeated); "
                  "members' mean: the same runs evaluated alone.", "",
                  *ensemble_table(ensembles, {r.name: r for r in singles}, metrics), ""]
    if any(r.others for r in runs):
        lines += ["## Other evaluations", "", *others_table(runs, metrics, levels), ""]
    chosen, errors = choices_table(runs), errors_table(runs)
    if chosen:
        lines += ["## How the answers were chosen", "", *chosen, ""]
    if errors:
        lines += ["## Why the wrong answers are wrong", "", "By the shape of the gold and predicted queries (an "
                  "answer can fall under several rows; unparsed: sqlglot could not read one of the two).", "",
                  *errors, ""]
    return lines


def is_report_folder(folder: Path) -> bool:
    """Whether ``folder`` holds only what a report writes (its page and PNG figures)."""
    return all(p.is_file() and (p.name == REPORT_FILE or p.suffix == ".png") for p in folder.iterdir())


def check_report_output(runs: list[Run], out: str | Path, overwrite: bool) -> Path:
    """Refuse, before any work, an output folder that overlaps a run or holds anything else
    than an earlier report (that only with ``overwrite``)."""
    for run in runs:
        refuse_overlap(run.folder, out, "-o")
    return check_output_folder(out, overwrite=overwrite, replaceable=is_report_folder, what="report",
                               out_option="-o")


def write_report(runs: list[Run], out: str | Path, *, command: str, title: str = "Evaluation report",
                 overwrite: bool = False) -> Path:
    """Write ``report.md`` and its figures into the folder ``out`` (replaced whole, atomically);
    return the page's path."""
    out = check_report_output(runs, out, overwrite)
    with new_folder(out) as folder:
        lines = [f"# {title}", "", f"Generated by `{command}` from {len(runs)} evaluated run{'s' if len(runs) > 1 else ''}.", ""]
        lines += report_sections(runs, folder)
        (folder / REPORT_FILE).write_text("\n".join(lines).rstrip() + "\n")
    return out / REPORT_FILE
