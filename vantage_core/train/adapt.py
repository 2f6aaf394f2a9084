"""``vantage adapt``: a trained model fine-tuned to one database from a few question/SQL pairs.

    summary = adapt(AdaptRequest(model="runs/spider", db="shop.sqlite", examples="pairs.jsonl", out="runs/shop"))

Every pair is checked before anything is written: its SQL runs on the database (read-only,
bounded, through its connector), and the model's codec writes it (a pointer model: the action
codec expresses it with the vocabulary the model has; a token model: it fits the model's
lengths). A pair that fails is named by its file and line, and nothing is written.

The adapted run is an ordinary run of :func:`vantage_core.train.run.build_run` and
:func:`~vantage_core.train.run.fit` on a config derived from the model's own:

- ``train.init_from``: the model (its weights and tokenizer start the run);
- ``data.train``: the user's pairs (``pairs``, upsampled to their share of each batch), pairs the
  synthetic templates write over the database (``templated``, only the templates whose SQL the
  model can write), and a sample of the model's own training data where it still loads (replay,
  against forgetting);
- a short fixed schedule: ``steps`` at ``lr`` with a tenth of them warming up, no validation, no
  moving average of the weights.

The saved weights are then a blend, ``blend`` times the fine-tuned ones plus the rest of the
model's own (a weight-space ensemble of the two): it keeps most of the gain on the database and
most of what the model knew about others.

It is trained in a hidden sibling of the output folder, which replaces the output folder (an
earlier adapted run there, with ``overwrite``) only once it is complete; ``adapt.json`` in it
records what it was adapted from and on.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import mlx.core as mx

from vantage_core.config import Config, DataSource, DistillConfig, dump_config
from vantage_core.errors import ConfigError, DataError, VantageError
from vantage_core.folders import check_output_folder, new_folder, output_path, refuse_overlap
from vantage_core.model.io import MODEL_FILE, read_model_folder, read_safetensors
from vantage_core.train.callbacks import Callback

SYNTHETIC = 200  # pairs the templates write, by default
STEPS = 200  # optimizer steps, by default
REPLAY_SHARE = 0.2  # of each batch, by default, where the model's training data loads
REPLAY_EXAMPLES = 500  # drawn from each source of the model's training data
LR_FRACTION = 0.3  # the default learning rate: this fraction of the one the model was trained at
BLEND = 0.5  # the fine-tuned weights' share of the saved ones, by default (the rest: the model's own)
MAX_LISTED = 10  # pairs that fail, listed one per line


@dataclass
class AdaptRequest:
    """What to adapt, to what and how (``vantage adapt``'s options)."""

    model: str  # a run, checkpoint or export folder (float weights)
    db: str  # the SQLite file the pairs are about
    out: str  # the adapted run's folder
    examples: str | None = None  # a JSON Lines file of {"question", "sql"} pairs; None: synthetic pairs only
    notes: str | None = None  # schema notes; None: the file beside the database, if any
    synthetic: int = SYNTHETIC
    replay: float = REPLAY_SHARE
    steps: int = STEPS
    lr: float | None = None  # None: LR_FRACTION of the model's own
    blend: float = BLEND  # 1: the fine-tuned weights alone
    seed: int = 0
    overwrite: bool = False
    progress: bool = True


def adapt(request: AdaptRequest, echo: Callable[[str], None] = print,
          on_step: Callable[[int, int], None] | None = None) -> dict:
    """Adapt ``request.model`` to ``request.db`` (see the module docstring); the adapted run's
    summary with its ``adapt`` record. ``on_step(step, steps)`` is called after each optimizer step."""
    from vantage_core.plugins import registry as default_registry

    started = time.perf_counter()
    folder, base, vocab, _, quantization = read_model_folder(request.model)
    folder = folder.resolve()
    if not 0 < request.blend <= 1:
        raise ConfigError(f"blend {request.blend}: the fine-tuned weights' share of the saved ones is above 0 and at most 1")
    if quantization:
        raise ConfigError(f"-m {request.model}: holds {quantization.get('bits')}-bit weights; adapt the float run "
                          f"or checkpoint it was exported from")
    out = check_adapt_output(request, folder)
    db, notes = check_database(request)
    registry = default_registry()
    checker = PairChecker(base, vocab, registry)
    sources = [user_pairs(request, db, notes, checker, registry)] if request.examples else []
    if request.synthetic:
        sources += synthetic_pairs(request, db, notes, checker, registry, echo)
    if not sources:
        raise DataError(f"nothing to adapt on: give --examples, or --synthetic above 0 over a database whose tables "
                        f"the templates can use ({db})")
    sources = shared_out(sources, 1.0 - request.replay)
    if request.replay:
        sources += replay_sources(base, request.replay, registry, echo)
    cfg = adapted_config(base, folder, sources, request, out)
    record = {"model": str(folder), "db": db, "notes": notes, "examples_sha256": file_sha256(request.examples),
              "steps": request.steps, "lr": cfg.train.lr, "blend": request.blend, "seed": request.seed,
              "sources": [s.model_dump(exclude_none=True) for s in sources]}
    return train_adapted(cfg, out, record, started, request.progress, echo, on_step)


# ---------------------------------------------------------------------------- checks before any work

def check_adapt_output(request: AdaptRequest, model_folder: Path) -> Path:
    """The output folder, absolute: neither the model's folder nor inside or around it, and new,
    empty or (with ``overwrite``) an earlier run."""
    from vantage_core.train.run import is_run_dir

    for source in (request.model, model_folder):  # the folder as given first: what the error names
        refuse_overlap(source, request.out, "-o")
    check_output_folder(request.out, overwrite=request.overwrite, replaceable=is_run_dir, what="run",
                        out_option="-o")
    return output_path(request.out)


def check_database(request: AdaptRequest) -> tuple[str, str | None]:
    """The database file and its notes file (``--notes``, else the one beside it), as absolute paths."""
    from vantage_core.data.notes import notes_beside
    from vantage_core.sql.database import is_url

    if is_url(request.db) or not Path(request.db).is_file():
        raise ConfigError(f"--db {request.db}: no such SQLite file; vantage adapt trains on a database given as "
                          f"the path of a SQLite file")
    db = str(Path(request.db).resolve())
    notes = request.notes or notes_beside(db)
    if notes is not None and not Path(notes).is_file():
        raise ConfigError(f"--notes {notes}: no such file")
    return db, None if notes is None else str(Path(notes).resolve())


class PairChecker:
    """Why a model cannot learn a pair (its SQL does not run, or the model's codec cannot write
    it), or None when it can."""

    def __init__(self, cfg: Config, vocab: Any, registry: Any):
        from vantage_core.data.targets import target_format

        self.cfg = cfg
        # why the model's codec cannot write example.sql, or None (its target format says)
        self.codec_problem = target_format(cfg.data).codec_check(cfg, vocab, registry)

    def problem(self, example: Any) -> str | None:
        from vantage_core.sql.database import open_database

        result = open_database(example.db_paths[0]).execute(example.sql, self.cfg.evaluate.timeout_s,
                                                            self.cfg.evaluate.max_rows)
        if not result.ok:
            return f"the SQL does not run on {Path(example.db_paths[0]).name}: {result.error}"
        return self.codec_problem(example)


def pair_problems(path: str, db: str, notes: str | None, checker: PairChecker,
                  registry: Any) -> tuple[list[Any], list[str]]:
    """The pairs of the JSON Lines file ``path`` over ``db``, and why each row that the model
    cannot learn cannot (``path:line: why``: not a pair, SQL that does not run, SQL the model's
    codec cannot write)."""
    from vantage_core.data.pipeline import load_source

    report, _ = load_source(DataSource(name="pairs", path=path, db=db, notes=notes), "train", registry)
    problems = list(report.details)
    for example in report.examples:
        why = checker.problem(example)
        if why is not None:
            problems.append(f"{path}:{example.extras['line']}: {why}")
    return report.examples, problems


def user_pairs(request: AdaptRequest, db: str, notes: str | None, checker: PairChecker, registry: Any) -> DataSource:
    """The source of the user's pairs, once every one of them passed: a :class:`DataError`
    listing each that did not (file:line: why), otherwise."""
    examples, problems = pair_problems(request.examples, db, notes, checker, registry)  # lines named as the user names the file
    if problems:
        listed = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
        raise DataError("\n".join(listed) + f"\n{len(problems)} of the pairs in {request.examples} cannot be learned "
                                            f"(above); fix or remove them. Nothing was written.")
    if not examples:
        raise DataError(f"{request.examples}: no pairs in the file; give one JSON object per line: "
                        f'{{"question": "...", "sql": "..."}}')
    return DataSource(name="pairs", path=str(Path(request.examples).resolve()), db=db, notes=notes)


def synthetic_pairs(request: AdaptRequest, db: str, notes: str | None, checker: PairChecker, registry: Any,
                    echo: Callable[[str], None]) -> list[DataSource]:
    """The source of the template pairs over the database, limited to the templates whose SQL
    the model's codec writes; none when no table suits the templates."""
    from vantage_core.data.pipeline import load_source

    source = DataSource(name="templated", db=db, n=request.synthetic, seed=request.seed, notes=notes)
    report, _ = load_source(source, "train", registry)
    failing = {ex.extras["template"] for ex in report.examples if checker.codec_problem(ex) is not None}
    written = {ex.extras["template"] for ex in report.examples} - failing
    if failing:
        echo(f"synthetic: left out the templates {', '.join(sorted(failing))}: the model's codec cannot write their SQL")
        source = source.model_copy(update={"leave_out": sorted(failing)})
    if not written:
        echo(f"synthetic: none; {'; '.join(report.notes) or 'no template pair the model can write'}")
        return []
    return [source]


def shared_out(sources: list[DataSource], share: float) -> list[DataSource]:
    """``sources`` weighted to split ``share`` of each batch equally."""
    return [s.model_copy(update={"weight": share / len(sources)}) for s in sources]


def replay_sources(base: Config, share: float, registry: Any, echo: Callable[[str], None]) -> list[DataSource]:
    """A sample of each of the model's training sources, together ``share`` of each batch; none
    (said why) where any of them no longer loads here (a model's folder does not hold its data)."""
    from vantage_core.data.pipeline import load_source

    sources = [s.model_copy(update={"sample": min(s.sample or REPLAY_EXAMPLES, REPLAY_EXAMPLES)}) for s in base.data.train]
    try:
        for source in sources:
            load_source(source, "train", registry)
    except VantageError as exc:
        echo(f"replay: none, the model's training data does not load here ({str(exc).splitlines()[0]})")
        return []
    total = sum(s.weight for s in base.data.train)
    return [s.model_copy(update={"weight": share * s.weight / total}) for s in sources]


def file_sha256(path: str | None) -> str | None:
    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------- the run

def adapted_config(base: Config, model_folder: Path, sources: list[DataSource], request: AdaptRequest,
                   out: Path) -> Config:
    """The model's config with the adapted run's data, schedule and starting weights."""
    lr = request.lr if request.lr is not None else base.train.lr * LR_FRACTION
    train = base.train.model_copy(update={
        "steps": request.steps, "lr": lr, "warmup_steps": request.steps // 10, "minutes": None, "ema_decay": None,
        "eval_every": 0, "save_every": 0, "init_from": str(model_folder), "distill": DistillConfig()})
    data = base.data.model_copy(update={"train": sources, "validation": [], "test": []})
    run = base.run.model_copy(update={"name": out.name, "dir": str(out), "seed": request.seed})
    return Config.model_validate({**base.model_dump(), "run": run.model_dump(), "data": data.model_dump(),
                                  "train": train.model_dump()})


def train_adapted(cfg: Config, out: Path, record: dict, started: float, progress: bool,
                  echo: Callable[[str], None], on_step: Callable[[int, int], None] | None = None) -> dict:
    """Train ``cfg`` in a hidden sibling of ``out`` and blend its weights with the model's (``record``'s
    ``model`` and ``blend``); that folder replaces ``out`` once complete, with ``record`` (and the wall
    time since ``started``) in its ``adapt.json``. The run's summary with that record under ``adapt``.
    ``on_step(step, steps)`` after each optimizer step."""
    from vantage_core.train.run import build_run, fit

    with new_folder(out) as staging:
        run = build_run(cfg.model_copy(update={"run": cfg.run.model_copy(update={"dir": str(staging)})}),
                        progress=progress, echo=echo)
        callbacks = run.callbacks + ([StepProgress(on_step)] if on_step is not None else [])
        summary = fit(run, callbacks)
        if summary.get("stopped"):
            raise VantageError(f"adaptation {summary['stopped']} at step {summary.get('step')}; {out} is as it was")
        blend_checkpoints(staging, Path(record["model"]), record["blend"])
        name_own_folder(staging, cfg)
        summary = {**summary, "adapt": {**record, "wall_s": time.perf_counter() - started}}
        (staging / "adapt.json").write_text(json.dumps(summary["adapt"], indent=2) + "\n")
    return summary


def blend_checkpoints(run_folder: Path, model_folder: Path, share: float) -> None:
    """Make the weights of each checkpoint in ``run_folder`` ``share`` times its own plus ``1 - share``
    times those in ``model_folder`` (the model the run was fine-tuned from); 1: left as they are."""
    if share == 1:
        return
    own = read_safetensors(model_folder / MODEL_FILE)
    for file in sorted((run_folder / "checkpoints").glob(f"*/{MODEL_FILE}")):
        tuned = read_safetensors(file)
        mx.save_safetensors(str(file), {name: blended(w, own[name], share) for name, w in tuned.items()})


def blended(tuned: mx.array, own: mx.array, share: float) -> mx.array:
    """``share * tuned + (1 - share) * own`` in ``tuned``'s dtype; a non-float array is ``tuned``."""
    if not mx.issubdtype(tuned.dtype, mx.floating):
        return tuned
    return (share * tuned.astype(mx.float32) + (1 - share) * own.astype(mx.float32)).astype(tuned.dtype)


def name_own_folder(folder: Path, cfg: Config) -> None:
    """Write ``cfg`` (whose ``run.dir`` is the folder the run is moved to) as the config of the
    run in ``folder`` and of each of its checkpoints."""
    text = dump_config(cfg)
    for path in [folder / "config.yaml", *sorted((folder / "checkpoints").glob("*/config.yaml"))]:
        path.write_text(text)


class StepProgress(Callback):
    """Calls ``report(step, steps)`` after each optimizer step (a caller's progress bar)."""

    def __init__(self, report: Callable[[int, int], None]):
        self.report = report

    def on_step(self, run: Any, record: dict) -> None:
        self.report(run.trainer.step, run.cfg.train.steps)
