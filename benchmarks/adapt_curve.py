"""The adaptation curve of ``vantage adapt`` on the held-out databases of a run: EX on each
database's questions after adapting on k of its own, for several k, against the model before.

    python benchmarks/adapt_curve.py -m runs/spider_ema_seed0 --k 0,5,10,20 --seeds 0 --out runs/adapt_curve
    python benchmarks/adapt_curve.py -m runs/spider_ema_seed0 --out runs/adapt_curve --report-only

The databases are those of the run's validation split (what ``vantage evaluate --split
validation`` scores; for ``configs/spider.yaml`` the 21 held-out Spider databases). Each
database's questions are split once, by a fixed shuffle that depends on ``--split-seed`` and the
database only (never on the adapt seed): the pool is the first ``--pool`` of them that adapt
accepts (its SQL runs and the model's codec writes it: adapt's own :class:`PairChecker`, on the
pairs as its ``pairs`` loader reads them), the scored set is every other question of the
database. The scored set is the same for every k; adapting on k uses the first k of the pool
(k=0: synthetic pairs only). A database whose pool falls short of the largest k, or whose
scored set has fewer than ``--min-scored`` questions, is skipped and listed.

For each (database, k, seed) the k pairs go to ``OUT/pairs``, ``adapt`` (its Python API) trains
``OUT/runs/<db>__k<k>__s<seed>``, and the adapted run is scored on the database's scored set and,
for forgetting, on a fixed sample (``--forget-sample``, ``--forget-seed``) of the held-out
questions, less those of the database itself. Scoring is ``vantage evaluate --checkpoint``'s:
the run's own config, its inference settings, its metrics (EX and EM). The unadapted model is
scored once on every question any of those sets holds (``OUT/baseline.json``).

Each result is one JSON file, ``OUT/results/<db>__k<k>__s<seed>.json``; one that exists is
reused, so a killed run continues where it stopped. Adapted runs are deleted once scored
(``--keep-runs`` keeps them). At the end (or with ``--report-only``) ``OUT/adapt_curve.md``
holds the table per k, where the gain comes from (the scored questions whose gold SQL is one of
the k pairs', asked again in other words, and the rest), and ``OUT/adapt_curve.png`` the curve.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

EX, EM = ("execution", "exec"), ("exact_match", "exact")  # (metric name, its per-example key)


@dataclass
class CurveSettings:
    """What to measure (the options below say what each means)."""

    model: str
    out: Path
    ks: list[int] = field(default_factory=lambda: [0, 5, 10, 20])
    seeds: list[int] = field(default_factory=lambda: [0])
    steps: int = 200
    synthetic: int = 200
    replay: float = 0.2
    lr: float | None = None  # None: adapt's default (a fraction of the model's own rate)
    blend: float = 0.5  # adapt's default
    pool: int = 20
    min_scored: int = 5
    forget_sample: int = 200
    forget_seed: int = 0
    split_seed: int = 0
    keep_runs: bool = False
    progress: bool = True


@dataclass
class DatabaseSplit:
    """One database's pool (adapt's examples, in order) and scored questions."""

    db_id: str
    db_path: str
    pool: list[dict]  # {"id", "question", "sql"}, the pairs adapt accepts, first k used for k
    scored: list[Any]  # the examples scored for every k


# ---------------------------------------------------------------------------- the split

def shuffled(examples: list, salt: str) -> list:
    """``examples`` in a fixed order drawn from ``salt`` alone."""
    order = list(examples)
    random.Random(salt).shuffle(order)
    return order


def write_pairs(path: Path, pairs: list[dict]) -> Path:
    """``pairs`` (``question``, ``sql``) as adapt's JSON Lines pairs file at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"question": p["question"], "sql": p["sql"]}) + "\n" for p in pairs))
    return path


def accepted_lines(path: Path, db_path: str, checker: Any, registry: Any, wanted: int) -> list[int]:
    """The line numbers of the first ``wanted`` pairs of ``path`` that adapt accepts over
    ``db_path``: loaded by its ``pairs`` loader (with the notes beside the database), checked by
    its :class:`PairChecker`."""
    from vantage_core.config import DataSource
    from vantage_core.data.notes import notes_beside
    from vantage_core.data.pipeline import load_source

    source = DataSource(name="pairs", path=str(path), db=db_path, notes=notes_beside(db_path))
    report, _ = load_source(source, "train", registry)
    lines = []
    for example in report.examples:
        if len(lines) == wanted:
            break
        if checker.problem(example) is None:
            lines.append(example.extras["line"])
    return lines


def split_database(examples: list, checker: Any, registry: Any, settings: CurveSettings) -> DatabaseSplit:
    """The database's pool (the first ``settings.pool`` accepted questions of its fixed shuffle)
    and scored set (all its other questions, in the shuffled order)."""
    db_id, db_path = examples[0].db_id, examples[0].db_paths[0]
    order = shuffled(examples, f"adapt-curve:{settings.split_seed}:{db_id}")
    candidates = [{"id": e.id, "question": e.question, "sql": e.sql} for e in order]
    path = write_pairs(settings.out / "pairs" / f"{db_id}__candidates.jsonl", candidates)
    lines = accepted_lines(path, db_path, checker, registry, settings.pool)
    pool = [candidates[line - 1] for line in lines]
    taken = {p["id"] for p in pool}
    return DatabaseSplit(db_id, db_path, pool, [e for e in order if e.id not in taken])


def by_database(examples: list) -> dict[str, list]:
    """The examples grouped by database, in their order."""
    out: dict[str, list] = {}
    for example in examples:
        out.setdefault(example.db_id, []).append(example)
    return out


def plan(held: list, dbs: list[str] | None, settings: CurveSettings) -> tuple[list[DatabaseSplit], dict[str, str]]:
    """The split of each database measured, and each database skipped with why."""
    from vantage_core.model.io import read_model_folder
    from vantage_core.plugins import registry as default_registry
    from vantage_core.train.adapt import PairChecker

    groups = by_database(held)
    unknown = sorted(set(dbs or []) - set(groups))
    if unknown:
        raise SystemExit(f"--dbs: {', '.join(unknown)} not among the held-out databases ({', '.join(sorted(groups))})")
    _, base, vocab, _, _ = read_model_folder(settings.model)
    registry = default_registry()
    checker = PairChecker(base, vocab, registry)
    splits, skipped = [], {}
    for db_id in sorted(dbs or groups):
        split = split_database(groups[db_id], checker, registry, settings)
        why = skip_reason(split, settings)
        if why:
            skipped[db_id] = why
        else:
            splits.append(split)
    return splits, skipped


def skip_reason(split: DatabaseSplit, settings: CurveSettings) -> str | None:
    """Why the database cannot be measured (too few accepted or scored questions), or None."""
    if len(split.pool) < max(settings.ks):
        return f"only {len(split.pool)} questions adapt accepts, k up to {max(settings.ks)} asked"
    if len(split.scored) < settings.min_scored:
        return f"{len(split.scored)} questions left to score after the pool of {len(split.pool)} (fewer than {settings.min_scored})"
    return None


def forgetting_sample(held: list, n: int, seed: int) -> list:
    """A fixed sample of ``n`` held-out questions (all where there are fewer), in the split's order."""
    if n >= len(held):
        return list(held)
    chosen = set(random.Random(f"adapt-curve-forget:{seed}").sample(range(len(held)), n))
    return [e for i, e in enumerate(held) if i in chosen]


# ---------------------------------------------------------------------------- scoring

def score_model(folder: str, examples: list) -> tuple[dict[str, dict], dict[str, float]]:
    """Per example id ``{"db", "exec", "exact"}`` of the model at ``folder`` on ``examples``,
    decoded and scored as ``vantage evaluate --checkpoint`` does; and the seconds of loading,
    decoding and scoring."""
    from vantage_core.cli.evaluate import chosen_metrics, decode_examples, engine_and_config
    from vantage_core.evaluate.runner import evaluate_predictions

    t0 = time.perf_counter()
    engine, cfg = engine_and_config(evaluate_options(folder))
    t1 = time.perf_counter()
    predictions, _ = decode_examples(engine, examples, (folder,))
    t2 = time.perf_counter()
    metrics = chosen_metrics((), cfg)
    missing = [name for name, _ in (EX, EM) if name not in {m.name for m in metrics}]
    if missing:
        raise SystemExit(f"{folder}: evaluate.metrics lacks {', '.join(missing)}; the curve reports EX and EM")
    rows = evaluate_predictions(examples, predictions, metrics, workers=1)["scores"]
    seconds = {"load_s": t1 - t0, "decode_s": t2 - t1, "metrics_s": time.perf_counter() - t2}
    scores = {e.id: {"db": e.db_id, "exec": r[EX[0]].get(EX[1]), "exact": r[EM[0]].get(EM[1])}
              for e, r in zip(examples, rows)}
    return scores, seconds


def evaluate_options(folder: str) -> Any:
    """``vantage evaluate --checkpoint folder``'s options, nothing else given."""
    from vantage_core.cli.evaluate import EvaluateOptions

    return EvaluateOptions(predictions_path=None, checkpoints=(folder,), dataset="", split="validation",
                           dataset_params=(), metric_names=(), limit=None, align="auto", workers=None, out_dir=None,
                           execute_on=None, notes=None, no_notes=False, config=None, overrides=())


def rate(scores: dict[str, dict], ids: list[str], key: str) -> float | None:
    """The mean of ``key`` over ``ids`` where it is not None (as ``vantage evaluate`` averages)."""
    values = [scores[i][key] for i in ids if scores[i][key] is not None]
    return sum(values) / len(values) if values else None


def baseline_scores(settings: CurveSettings, examples: list) -> dict[str, dict]:
    """The unadapted model's scores on ``examples``, from ``OUT/baseline.json`` where it holds
    them (the rest decoded now and added)."""
    path = settings.out / "baseline.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"model": settings.model, "scores": {}}
    if doc["model"] != settings.model:
        raise SystemExit(f"{path}: the baseline of {doc['model']}, not of -m {settings.model}; use another --out")
    todo = [e for e in examples if e.id not in doc["scores"]]
    if todo:
        scores, seconds = score_model(settings.model, todo)
        doc["scores"].update(scores)
        doc.setdefault("seconds", []).append({"examples": len(todo), **seconds})
        path.write_text(json.dumps(doc, indent=1) + "\n")
    return doc["scores"]


# ---------------------------------------------------------------------------- one point of the curve

def result_path(out: Path, db_id: str, k: int, seed: int) -> Path:
    return out / "results" / f"{db_id}__k{k}__s{seed}.json"


def adapt_once(settings: CurveSettings, split: DatabaseSplit, k: int, seed: int) -> tuple[Path, dict]:
    """The run adapted to the database on the first ``k`` pairs of its pool, and adapt's record
    with the wall seconds measured around it and what adapt said."""
    from vantage_core.train.adapt import AdaptRequest, adapt

    examples = write_pairs(settings.out / "pairs" / f"{split.db_id}__k{k}.jsonl", split.pool[:k]) if k else None
    folder = settings.out / "runs" / f"{split.db_id}__k{k}__s{seed}"
    said: list[str] = []
    t0 = time.perf_counter()
    summary = adapt(AdaptRequest(model=settings.model, db=split.db_path, out=str(folder),
                                 examples=examples and str(examples), synthetic=settings.synthetic,
                                 replay=settings.replay, steps=settings.steps, lr=settings.lr, blend=settings.blend, seed=seed, overwrite=True, progress=False), echo=said.append)
    record = {**summary["adapt"], "measured_wall_s": time.perf_counter() - t0, "said": said,
              "final_loss": summary.get("final_loss")}
    return folder, record


def sql_key(sql: str) -> str:
    """``sql`` compared as text: case, spacing and a final semicolon ignored."""
    return " ".join(sql.strip().rstrip(";").split()).lower()


def repeated_ids(split: DatabaseSplit, k: int) -> list[str]:
    """The scored questions whose gold SQL is that of one of the first ``k`` pairs: the same query
    asked again in other words."""
    asked = {sql_key(p["sql"]) for p in split.pool[:k]}
    return [e.id for e in split.scored if sql_key(e.sql) in asked]


def measure_point(settings: CurveSettings, split: DatabaseSplit, k: int, seed: int, forget: list) -> dict:
    """Adapt, score and (unless ``keep_runs``) delete: the point's result, as written to its file."""
    folder, record = adapt_once(settings, split, k, seed)
    others = [e for e in forget if e.db_id != split.db_id]
    scores, seconds = score_model(str(folder), split.scored + others)
    if not settings.keep_runs:
        shutil.rmtree(folder)
    scored_ids, other_ids = [e.id for e in split.scored], [e.id for e in others]
    result = {"db": split.db_id, "k": k, "seed": seed, "steps": settings.steps, "synthetic": settings.synthetic, "replay": settings.replay,
              "lr": record.get("lr"), "blend": settings.blend,
              "pairs": [p["id"] for p in split.pool[:k]], "scored": scored_ids, "forget": other_ids,
              "scored_repeats": repeated_ids(split, k),
              "ex": rate(scores, scored_ids, "exec"), "em": rate(scores, scored_ids, "exact"),
              "forget_ex": rate(scores, other_ids, "exec"), "forget_em": rate(scores, other_ids, "exact"),
              "adapt_s": record["measured_wall_s"], "adapt": record, "score_seconds": seconds,
              "per_example": {i: scores[i] for i in scored_ids + other_ids}}
    path = result_path(settings.out, split.db_id, k, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(path)  # a killed run leaves no half-written result
    return result


def run_curve(settings: CurveSettings, held: list, dbs: list[str] | None = None,
              echo: Callable[[str], None] = print) -> dict:
    """Measure every (database, k, seed) that has no result file yet; the plan's record
    (``OUT/plan.json``: databases measured with their split, skipped with why, points that
    failed with why: a point that fails is said and left without a result, the others go on)."""
    from tqdm import tqdm

    from vantage_core.errors import VantageError

    if len({e.id for e in held}) != len(held):
        raise SystemExit("the held-out examples' ids repeat; the curve names each question by its id")
    settings.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    splits, skipped = plan(held, dbs, settings)
    for db_id, why in skipped.items():
        echo(f"skipped {db_id}: {why}")
    echo(f"split {len(splits) + len(skipped)} databases in {time.perf_counter() - t0:.0f} s")
    forget = forgetting_sample(held, settings.forget_sample, settings.forget_seed)
    needed = {e.id: e for s in splits for e in s.scored} | {e.id: e for e in forget}
    t0 = time.perf_counter()
    baseline_scores(settings, list(needed.values()))
    echo(f"the unadapted model on {len(needed)} questions: {time.perf_counter() - t0:.0f} s (none decoded where "
         f"{settings.out / 'baseline.json'} held them)")
    record = {"model": settings.model, "skipped": skipped, "forget_sample": [e.id for e in forget],
              "databases": {s.db_id: {"pool": [p["id"] for p in s.pool], "scored": [e.id for e in s.scored]}
                            for s in splits}}
    (settings.out / "plan.json").write_text(json.dumps(record, indent=1) + "\n")
    points = [(s, k, seed) for s in splits for k in settings.ks for seed in settings.seeds]
    record["failed"] = {}
    for split, k, seed in tqdm(points, desc="adapt curve", unit="run", disable=not settings.progress):
        if result_path(settings.out, split.db_id, k, seed).is_file():
            continue
        try:
            echo(point_line(measure_point(settings, split, k, seed, forget)))
        except VantageError as exc:  # one point that fails must not stop a run of hours
            why = str(exc).splitlines()[0]
            record["failed"][result_path(settings.out, split.db_id, k, seed).stem] = why
            echo(f"{split.db_id} k={k} seed={seed}: failed, no result written (the next call tries again): {why}")
    (settings.out / "plan.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def point_line(result: dict) -> str:
    """One line of a measured point: its scores and the seconds of each stage."""
    s = result["score_seconds"]
    return (f"{result['db']} k={result['k']} seed={result['seed']}: EX {pct(result['ex'])} on {len(result['scored'])}, "
            f"other dbs {pct(result['forget_ex'])} on {len(result['forget'])}; adapt {result['adapt_s']:.0f} s, "
            f"load {s['load_s']:.0f} s, decode {s['decode_s']:.0f} s, metrics {s['metrics_s']:.0f} s")


# ---------------------------------------------------------------------------- the report

def read_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))]


def mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def curve_rows(results: list[dict], baseline: dict[str, dict]) -> list[dict]:
    """One row per k: means over the databases (each database's mean over its seeds), the gain
    over the unadapted model on the same questions, minutes per adaptation, forgetting, and the
    per-seed means (their spread where several seeds ran)."""
    rows = []
    for k in sorted({r["k"] for r in results}):
        at_k = [r for r in results if r["k"] == k]
        per_db: dict[str, list[dict]] = {}
        for r in at_k:
            per_db.setdefault(r["db"], []).append(r)

        def over_dbs(value: Callable[[dict], float | None]) -> float | None:
            return mean([mean([value(r) for r in runs]) for runs in per_db.values()])

        seeds = sorted({r["seed"] for r in at_k})
        rows.append({
            "k": k, "databases": len(per_db), "runs": len(at_k), "ex": over_dbs(lambda r: r["ex"]),
            "em": over_dbs(lambda r: r["em"]), "base_ex": over_dbs(lambda r: rate(baseline, r["scored"], "exec")),
            "base_em": over_dbs(lambda r: rate(baseline, r["scored"], "exact")),
            "gain_ex": over_dbs(lambda r: gain(r["ex"], rate(baseline, r["scored"], "exec"))),
            "minutes": mean([r["adapt_s"] / 60 for r in at_k]),
            "forget_before": over_dbs(lambda r: rate(baseline, r["forget"], "exec")),
            "forget_after": over_dbs(lambda r: r["forget_ex"]),
            "seed_ex": {s: mean([r["ex"] for r in at_k if r["seed"] == s]) for s in seeds}})
    return rows


def net_right(after: dict[str, dict], before: dict[str, dict], ids: Iterable[str]) -> int:
    """Questions of ``ids`` right after less those right before (EX; one unscored is neither)."""
    return sum((after[i]["exec"] or 0) - (before[i]["exec"] or 0) for i in ids)


def repeat_rows(results: list[dict], baseline: dict[str, dict]) -> list[dict]:
    """Per k, where the gain comes from: the scored questions whose gold SQL is one of the k
    pairs' (asked again in other words) and the others, each with the net questions gained over
    all databases, means over the seeds. Results written before the split was recorded are left
    out (none: no row)."""
    rows = []
    for k in sorted({r["k"] for r in results}):
        at_k = [r for r in results if r["k"] == k and "scored_repeats" in r]
        seeds = sorted({r["seed"] for r in at_k})
        if not seeds:
            continue
        per_seed = []
        for seed in seeds:
            runs = [r for r in at_k if r["seed"] == seed]
            repeats = [(r, set(r["scored_repeats"])) for r in runs]
            per_seed.append({
                "scored": sum(len(r["scored"]) for r in runs),
                "repeats": sum(len(rep) for _, rep in repeats),
                "net_repeats": sum(net_right(r["per_example"], baseline, rep) for r, rep in repeats),
                "net_others": sum(net_right(r["per_example"], baseline, [i for i in r["scored"] if i not in rep])
                                  for r, rep in repeats)})
        rows.append({"k": k, "seeds": len(seeds), "databases": len({r["db"] for r in at_k}),
                     **{key: statistics.fmean(p[key] for p in per_seed) for key in per_seed[0]}})
    return rows


def gain(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def pct(value: float | None, signed: bool = False) -> str:
    return "n/a" if value is None else f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def spread(seed_ex: dict) -> str:
    """The per-seed mean EX as mean ± standard deviation (n seeds), or '-' for one seed."""
    values = [v for v in seed_ex.values() if v is not None]
    if len(values) < 2:
        return "-"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f} ({len(values)})"


def markdown(rows: list[dict], plan_record: dict, settings_line: str, repeats: list[dict] = ()) -> str:
    """The curve as a Markdown table, where its gain comes from, and the databases skipped."""
    lines = ["# Adaptation curve of `vantage adapt`", "", settings_line, "",
             "EX/EM: on each database's scored questions (the same for every k), mean over databases. "
             "Gain: EX minus the unadapted model's on the same questions. Forgetting: EX on the fixed sample of "
             "the other held-out databases' questions, before (unadapted) and after.", "",
             "| k | databases | runs | EX | EM | unadapted EX | gain EX | min / adaptation | other dbs EX before | "
             "after | EX over seeds |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['databases']} | {r['runs']} | {pct(r['ex'])} | {pct(r['em'])} | "
                     f"{pct(r['base_ex'])} | {pct(r['gain_ex'], True)} | {r['minutes']:.2f} | "
                     f"{pct(r['forget_before'])} | {pct(r['forget_after'])} | {spread(r['seed_ex'])} |")
    if repeats:
        lines += ["", "Where the gain comes from: the scored questions whose gold SQL is one of the k pairs' "
                  "(the same query asked in other words) and the rest; questions right after adapting less "
                  "those right before, summed over the databases, mean over the seeds.", "",
                  "| k | databases | seeds | scored questions | of them, a pair's SQL | net gained there | "
                  "net gained on the rest |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['k']} | {r['databases']} | {r['seeds']} | {r['scored']:.0f} | {r['repeats']:.0f} | "
                  f"{r['net_repeats']:+.1f} | {r['net_others']:+.1f} |" for r in repeats]
    skipped, failed = plan_record.get("skipped") or {}, plan_record.get("failed") or {}
    if skipped:
        lines += ["", f"Databases skipped ({len(skipped)}):"] + [f"- {db}: {why}" for db, why in sorted(skipped.items())]
    if failed:
        lines += ["", f"Failed in the last call, no result ({len(failed)}):"] + [f"- {p}: {why}" for p, why in sorted(failed.items())]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    """EX against k (mean over databases; each seed's mean as a dot where several ran), the
    unadapted model's EX on the same questions as a line, and the other databases' EX after."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(ks, [100 * (r["ex"] or 0) for r in rows], "o-", label="adapted: scored questions")
    for r in rows:
        seeds = [100 * v for v in r["seed_ex"].values() if v is not None]
        if len(seeds) > 1:
            ax.vlines(r["k"], min(seeds), max(seeds), color="C0", alpha=0.5)
            ax.scatter([r["k"]] * len(seeds), seeds, s=10, color="C0", alpha=0.5)
    base = mean([r["base_ex"] for r in rows])
    if base is not None:
        ax.axhline(100 * base, color="gray", linestyle="--", label="unadapted: scored questions")
    ax.plot(ks, [100 * (r["forget_after"] or 0) for r in rows], "s:", color="C1", label="adapted: other databases")
    before = mean([r["forget_before"] for r in rows])
    if before is not None:
        ax.axhline(100 * before, color="C1", linestyle="-.", alpha=0.6, label="unadapted: other databases")
    ax.set_xlabel("k (the database's own pairs adapted on)")
    ax.set_ylabel("EX (%)")
    ax.set_xticks(ks)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, settings_line: str = "") -> Path:
    """``OUT/adapt_curve.md`` and ``OUT/adapt_curve.png`` from the results there."""
    results = read_results(out)
    if not results:
        raise SystemExit(f"{out}/results: no result yet; run without --report-only first")
    baseline = json.loads((out / "baseline.json").read_text())["scores"]
    plan_record = json.loads((out / "plan.json").read_text()) if (out / "plan.json").is_file() else {}
    rows = curve_rows(results, baseline)
    line = settings_line or f"model: {plan_record.get('model')}; {recorded_settings(results)}"
    (out / "adapt_curve.md").write_text(markdown(rows, plan_record, line, repeat_rows(results, baseline)))
    plot(rows, out / "adapt_curve.png")
    return out / "adapt_curve.md"


def recorded_settings(results: list[dict]) -> str:
    """What the results say adapt ran with: each setting's values, in the order first seen (a result
    from before --blend existed saved the fine-tuned weights alone: blend 1)."""
    def values(key: str, missing: Any = None) -> str:
        seen = dict.fromkeys(str(r.get(key, missing)) for r in results)
        return ", ".join(seen)

    return (f"adapt --steps {values('steps')} --synthetic {values('synthetic')} --replay {values('replay')} "
            f"--blend {values('blend', 1.0)} (as recorded in the results)")


# ---------------------------------------------------------------------------- command line

def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers separated by commas, e.g. 0,5,10,20")
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers of 0 or more, e.g. 0,5,10,20")
    return values


def held_out_examples(model: str) -> list:
    """The run's validation split (the held-out databases ``vantage evaluate --split validation``
    scores), with the notes beside each database applied as it applies them."""
    from vantage_core.cli.evaluate import noted_examples
    from vantage_core.config import load_config
    from vantage_core.data.pipeline import load_split

    config = Path(model) / "config.yaml"
    if not config.is_file():
        raise SystemExit(f"-m {model}: no config.yaml; give a run folder")
    cfg = load_config(str(config))
    if not cfg.data.validation:
        raise SystemExit(f"{config}: data.validation is empty; the curve measures the held-out databases there")
    return noted_examples(load_split(cfg.data, "validation").examples, None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", required=True, help="the run to adapt (its validation split gives the databases)")
    p.add_argument("--out", required=True, type=Path, help="folder of the results, the report and the plot")
    p.add_argument("--k", type=int_list, default=[0, 5, 10, 20], help="pairs of the database adapted on (default 0,5,10,20)")
    p.add_argument("--seeds", type=int_list, default=[0], help="adapt seeds (default 0)")
    p.add_argument("--dbs", default="all", help="all, or database ids separated by commas")
    p.add_argument("--steps", type=int, default=200, help="adapt's --steps (default 200)")
    p.add_argument("--synthetic", type=int, default=200, help="adapt's --synthetic (default 200)")
    p.add_argument("--replay", type=float, default=0.2, help="adapt's --replay (default 0.2)")
    p.add_argument("--lr", type=float, default=None, help="adapt's --lr (default: adapt's, 0.3 of the model's rate)")
    p.add_argument("--blend", type=float, default=0.5, help="adapt's --blend (default 0.5)")
    p.add_argument("--pool", type=int, default=20, help="accepted questions per database kept for adapting (default 20)")
    p.add_argument("--min-scored", type=int, default=5, help="fewest scored questions a database needs (default 5)")
    p.add_argument("--forget-sample", type=int, default=200, help="held-out questions sampled for forgetting (default 200)")
    p.add_argument("--forget-seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0, help="the shuffle of each database's questions (default 0)")
    p.add_argument("--keep-runs", action="store_true", help="keep the adapted runs (default: deleted once scored)")
    p.add_argument("--report-only", action="store_true", help="only write the report from the results in --out")
    args = p.parse_args(argv)
    if not args.report_only and args.pool < max(args.k):
        p.error(f"--pool {args.pool} is below the largest --k {max(args.k)}")
    if args.steps < 1:
        p.error(f"--steps {args.steps}: give 1 or more")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = CurveSettings(model=str(Path(args.model).resolve()), out=args.out, ks=sorted(set(args.k)), seeds=args.seeds,
                             steps=args.steps, synthetic=args.synthetic, replay=args.replay, lr=args.lr, blend=args.blend, pool=args.pool, min_scored=args.min_scored,
                             forget_sample=args.forget_sample, forget_seed=args.forget_seed,
                             split_seed=args.split_seed, keep_runs=args.keep_runs)
    line = (f"model: {args.model}; adapt --steps {args.steps} --synthetic {args.synthetic} --replay {args.replay}{f' --lr {args.lr}' if args.lr else ''} --blend {args.blend}; pool {args.pool}, "
            f"split seed {args.split_seed}; forgetting sample {args.forget_sample} (seed {args.forget_seed})")
    if not args.report_only:
        dbs = None if args.dbs == "all" else [d.strip() for d in args.dbs.split(",") if d.strip()]
        from tqdm import tqdm

        t0 = time.perf_counter()
        held = held_out_examples(args.model)
        print(f"loaded {len(held)} held-out questions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        run_curve(settings, held, dbs, echo=lambda m: tqdm.write(m, file=sys.stderr))
    print(write_report(args.out, "" if args.report_only else line))


if __name__ == "__main__":
    main()
