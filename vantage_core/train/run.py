"""``vantage train``: from a config to a run directory.

A run directory holds everything needed to look at the run later::

    config.yaml        the resolved config
    plugins.json       every registered plugin: name, kind, distribution, version
    data.json          what each data source gave (loaded, skipped, dropped)
    tokenizer/         the decoder's tokenizer
    metrics.jsonl      one record per step (and per evaluation)
    checkpoints/last/  the latest checkpoint; checkpoints/best/ the best by validation metric
    eval/              the predictions of the last evaluation
    plots/             loss.png, expert_load.png, eval.png
    summary.json       headline figures; report.md a readable summary

:func:`build_run` makes a run's parts (folder, data, model, trainer, batches, telemetry) and
:func:`fit` runs its steps; evaluation, checkpoints, the step log and the report are callbacks
(:mod:`vantage_core.train.callbacks`). :func:`train` is the two together.
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from vantage_core.config import Config, dump_config
from vantage_core.data.targets import Preparation, TargetFormat, target_format
from vantage_core.errors import ConfigError, VantageError
from vantage_core.folders import check_output_folder, output_path, swap_in
from vantage_core.model.io import (load_trainer_state, load_weights, plugin_list, read_model_folder, resolve_checkpoint,
                                   save_checkpoint)
from vantage_core.train.callbacks import Callback, Outcome, standard_callbacks
from vantage_core.train.distill import TEACHER_FIELDS, teacher_folders, teacher_targets
from vantage_core.train.distributed import World, init_world
from vantage_core.train.precision import resolve_precision
from vantage_core.train.telemetry import Telemetry, trim_metrics
from vantage_core.train.trainer import StopFlag, Trainer, TrainingDiverged

# Fields a resumed run may change (how long, how often, where to log): anything else would make
# the resumed run a different experiment.
RESUMABLE_CHANGES = ("train.steps", "train.eval_every", "train.eval_examples", "train.save_every",
                     "train.log_every", "train.loggers", "train.compile", "evaluate.")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool, world: World) -> Path:
    """Check the run directory against --resume/--overwrite (only an earlier run may be
    overwritten); on resume, check the config matches. Changes nothing: a new run is started
    beside it (:func:`staged_start`)."""
    run_dir = cfg.run.path
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other")
    exists = run_dir.exists() and any(run_dir.iterdir())
    if resume:
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise VantageError(f"{run_dir}: nothing to resume (no config.yaml); start it without --resume")
        from vantage_core.config import load_config

        old = _flat(load_config(saved, registry=False).to_dict())
        new = _flat(cfg.to_dict())
        changed = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
                   and not any(k == p or (p.endswith(".") and k.startswith(p)) or k.startswith(p + ".")
                               for p in RESUMABLE_CHANGES)]
        if changed:
            raise ConfigError(f"{saved}: --resume with a different config: " +
                              "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8]) +
                              f". Only {', '.join(RESUMABLE_CHANGES)} may change on resume; start a new "
                              f"run (another run.name) instead")
        resolve_checkpoint(run_dir / "checkpoints" / "last")
        return run_dir
    if exists and not overwrite:
        raise VantageError(f"{run_dir} already exists; pass --resume to continue that run or "
                           f"--overwrite to replace it (or set run.name / run.dir)")
    return check_output_folder(run_dir, overwrite=overwrite, replaceable=is_run_dir, what="training run",
                               out_option="run.dir")


def is_run_dir(folder: Path) -> bool:
    """Whether ``folder`` holds a run of ``vantage train`` (every run writes config.yaml and
    plugins.json first) or only the tokenizer ``vantage tokenizer train`` and ``vantage data
    prepare`` save for one: what --overwrite may replace."""
    if (folder / "config.yaml").is_file() and (folder / "plugins.json").is_file():
        return True
    return {entry.name for entry in folder.iterdir()} <= {"tokenizer"}


@contextmanager
def staged_start(run_dir: Path, resume: bool, world: World) -> Iterator[Path]:
    """The folder a run's start (config, plugins, tokenizer) is written to: on --resume the run
    folder itself; otherwise a hidden sibling that replaces the run folder (an earlier run there
    included) only once the block ends without an error, and is deleted when it raises. A start
    that fails on its data or its model thus leaves the run folder as it was."""
    if resume:
        yield run_dir
        return
    target = output_path(run_dir)
    staging = target.with_name(f".{target.name}.starting")  # one name for every rank
    if world.is_main:
        shutil.rmtree(staging, ignore_errors=True)  # left by a start that was killed
        try:
            staging.mkdir(parents=True)
        except OSError as exc:
            raise VantageError(f"{run_dir}: cannot create the run folder here ({exc.strerror}); set run.dir "
                               f"to a folder you can write") from None
    world.barrier()
    try:
        yield staging
    except BaseException:
        if world.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    world.barrier()
    if world.is_main:
        swap_in(staging, target)
    world.barrier()
    shutil.rmtree(staging, ignore_errors=True)  # a rank on another machine: its own copy


def _main_first(world: World, fn: Callable[[], Any]) -> Any:
    """Rank 0 runs ``fn`` first (it fills the caches), then the others."""
    result = fn() if world.is_main else None
    world.barrier()
    if not world.is_main:
        result = fn()
    world.barrier()
    return result


class ModelBatches:
    """Global training batches, each split across ranks, resumable at any batch.

    Every rank walks the same stream of global batches (same seed) and keeps its rows
    (``rows[rank::size]``): the global batch does not depend on the number of processes.
    """

    def __init__(self, prepared: Any, batch_size: int, seed: int, world: World, collate: Callable[[Any], dict],
                 bucket_batches: int = 32):
        from vantage_core.data.batching import TrainBatches

        if batch_size % world.size:
            raise ConfigError(f"train.batch_size: {batch_size} must be a multiple of the number of "
                              f"processes ({world.size})")
        self.batches = TrainBatches(prepared, batch_size, seed=seed, rank=0, world_size=1,
                                    bucket_batches=bucket_batches)
        self.prepared, self.world, self.collate = prepared, world, collate

    def stream(self, start: int = 0):
        epoch, skipped = 0, 0
        while True:
            rows_of_epoch = self.batches.epoch_batches(epoch)
            if skipped + len(rows_of_epoch) <= start:  # a resumed run skips whole epochs cheaply
                skipped += len(rows_of_epoch)
                epoch += 1
                continue
            first = max(start, skipped)  # the global index of the first batch yielded from this epoch
            for index, rows in enumerate(rows_of_epoch[first - skipped:], first):
                yield self.collate(rows[self.world.rank::self.world.size], index)
            skipped += len(rows_of_epoch)
            start = skipped
            epoch += 1


def model_arrays(model: Any, batch: dict, pack: bool = True) -> dict:
    """A host-side batch to the arrays the model's loss reads (``schema``: what the model's
    schema encoder makes of the batch; with ``pack``, where the real positions are; the teachers'
    entries where the batch carries them)."""
    arrays = {k: mx.array(batch[k]) for k in ("tokens", "targets", "loss_mask", "padding_mask")}
    arrays.update({k: mx.array(batch[k]) for k in TEACHER_FIELDS if k in batch})
    arrays["schema"] = {k: v for k, v in model.schema_inputs(batch).items()
                        if pack or not k.startswith("pack_")}  # the encoder's own packing, if any
    if pack:  # the decoder's position-wise layers skip the padding
        from vantage_core.model.packing import packing_arrays

        arrays.update(packing_arrays(batch["padding_mask"]))
    return arrays


class TrainingData:
    """What training reads: the target format, the tokenizer (or action vocabulary), the prepared
    train and validation splits, and how rows of the train split become a batch
    (``collate(rows, index)``; ``index``: the global training batch's, 0 by default)."""

    def __init__(self, target: TargetFormat, tokenizer: Any, train: Any, validation: Any,
                 collate: Callable[..., dict]):
        self.target, self.tokenizer, self.train, self.validation = target, tokenizer, train, validation
        self.collate = collate


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return total, trainable


@dataclass
class Run:
    """The parts of one training run, built by :func:`build_run` and trained by :func:`fit`."""

    cfg: Config
    world: World
    registry: Any
    folder: Path  # the run directory
    data: TrainingData
    model: Any
    trainer: Trainer
    batches: Iterator[dict]  # this rank's rows of each global batch, from batch number batches_drawn on
    telemetry: Telemetry
    callbacks: list[Callback]  # what fit does around the steps: standard_callbacks()
    parameters: tuple[int, int]  # total, trainable
    started: float  # time.perf_counter() when the run began (its report's wall time)
    progress: bool = True
    batches_drawn: int = 0  # global batches drawn so far (a checkpoint records it, to resume the stream)
    best: dict = field(default_factory=dict)  # metric, value and step of checkpoints/best
    final_scores: dict = field(default_factory=dict)  # the validation scores at the end
    summary: dict = field(default_factory=dict)  # what Report wrote to summary.json

    def trainer_state(self) -> dict:
        return {"step": self.trainer.step, "batches": self.batches_drawn, "best": self.best,
                "seed": self.cfg.run.seed, "world_size": self.world.size}

    def save_checkpoint(self, name: str) -> None:
        """Write ``checkpoints/<name>`` (rank 0): the weights to use (the moving average where
        ``train.ema_decay`` is set), with the optimizer and training weights to resume from."""
        if not self.world.is_main:
            return
        with self.trainer.averaged() as raw:
            save_checkpoint(self.folder / "checkpoints" / name, model=self.model, optimizer=self.trainer.optimizer,
                            trainer_state=self.trainer_state(), config_yaml=dump_config(self.cfg),
                            plugins=plugin_list(self.registry), save_tokenizer=self.data.tokenizer.save,
                            training_weights=raw)


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print, world: World | None = None,
          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train the model ``cfg`` describes; return the run's summary (also in summary.json).
    ``clock``: what ``train.minutes`` is measured with (seconds)."""
    run = build_run(cfg, resume=resume, overwrite=overwrite, progress=progress, echo=echo, world=world)
    return fit(run, run.callbacks, clock=clock)


def build_run(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
              echo: Callable[[str], None] = print, world: World | None = None) -> Run:
    """Everything the run ``cfg`` describes needs before its first step: the run folder (checked
    against ``resume``/``overwrite``; a start that fails leaves it as it was), the data, the model,
    the trainer (restored from ``checkpoints/last`` on resume), the batches, the telemetry and
    the standard callbacks."""
    from vantage_core.model import loss as model_loss
    from vantage_core.plugins import registry as default_registry

    world = world or init_world()
    say = echo if world.is_main else (lambda *_: None)
    registry = default_registry()
    folder = prepare_run_dir(cfg, resume, overwrite, world)
    teacher_folders(cfg)  # a missing teacher: an error before any work
    resolve_precision(cfg.train.precision)  # a bad VANTAGE_PRECISION too
    init = None if resume else initial_model(cfg)  # on resume, the last checkpoint holds the weights
    started = time.perf_counter()
    mx.random.seed(cfg.run.seed)
    with staged_start(folder, resume, world) as start_dir:
        if world.is_main and not resume:
            (start_dir / "config.yaml").write_text(dump_config(cfg))
            (start_dir / "plugins.json").write_text(json.dumps(plugin_list(registry), indent=2))
        if init is not None:  # the run keeps the tokenizer its first weights were trained with
            _main_first(world, lambda: init.tokenizer.save(start_dir / "tokenizer"))
        # rank 0 first: it fills the caches the others then read
        data = training_data(cfg, registry, world, start_dir / "tokenizer", say, progress)
        model = training_model(cfg, data, registry, world, progress, init.folder if init else None)
        # train.distill: the teachers' distributions on the training split (cached), carried by the batches
        teachers = _main_first(world, lambda: teacher_targets(cfg, data, start_dir, resume, progress))
    if world.is_main:
        record_start(folder, cfg, data, resume)
    total, trainable = count_parameters(model)
    say(f"model: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable)")
    distill = cfg.train.distill
    loss_fn = partial(model_loss, distill_weight=distill.weight, temperature=distill.temperature) \
        if teachers is not None else model_loss
    trainer = Trainer(model, loss_fn, cfg.train, world, after_update=nudge_routers, seed=cfg.run.seed)
    say(str(trainer.precision))
    drawn, best = 0, {"metric": cfg.train.select_metric, "value": None, "step": None}
    if resume:
        drawn, best = resume_trainer(trainer, folder, best, world, say)
    collate = teachers.attach(data.collate, data.tokenizer.vocab_size) if teachers is not None else data.collate
    batches = ModelBatches(data.train, cfg.train.batch_size, cfg.run.seed, world, collate,
                           cfg.train.bucket_batches).stream(drawn)
    telemetry = Telemetry(folder, cfg.to_dict(), cfg.train.loggers, registry, cfg.train.steps,
                          trainer.step, enabled=world.is_main, progress=progress)
    return Run(cfg, world, registry, folder, data, model, trainer, batches, telemetry, standard_callbacks(),
               (total, trainable), started, progress=progress, batches_drawn=drawn, best=best)


def training_data(cfg: Config, registry: Any, world: World, tok_dir: Path, say: Callable[[str], None],
                  progress: bool = True) -> TrainingData:
    """The tokenizer and prepared splits of the config's target format (``data.target``); rank 0
    prepares first (it fills the caches the others then read), and alone prepares validation."""
    target = target_format(cfg.data)
    prep = Preparation(registry, tok_dir, say, partial(_main_first, world), validation=world.is_main,
                       progress=progress)
    splits = target.training_splits(cfg, prep)
    data = TrainingData(target, splits.vocab, splits.train, splits.validation,
                        target.training_batches(splits.train, splits.vocab, cfg.run.seed))
    say(f"train: {len(data.train)} examples; validation: {len(data.validation) if data.validation else 0}; "
        f"vocabulary {data.tokenizer.vocab_size}; {world.size} process(es)")
    return data


def training_model(cfg: Config, data: TrainingData, registry: Any, world: World, progress: bool,
                   init_folder: Path | None = None) -> Any:
    """The model, initialized (with the weights in ``init_folder`` where given: ``train.init_from``);
    a schema encoder with frozen parts computes their states once for both splits, through its
    content-keyed cache."""
    from vantage_core.model import build_model

    model = build_model(cfg.model, data.tokenizer, registry)
    if init_folder is not None:
        try:
            load_weights(model, init_folder)
        except VantageError as exc:
            raise ConfigError(f"train.init_from: {exc}; the model section must be the one it was trained with") from None
    mx.eval(model.parameters())
    if hasattr(model.schema_encoder, "precompute"):
        splits = [data.train] + ([data.validation] if data.validation is not None else [])
        texts = [split.frozen_texts() for split in splits]
        _main_first(world, lambda: model.schema_encoder.precompute(
            [q for qs, _ in texts for q in qs], [n for _, ns in texts for n in ns], progress=progress))
    return model


@dataclass
class InitialModel:
    """``train.init_from``: the folder holding the weights a run starts from, and their tokenizer."""

    folder: Path
    tokenizer: Any


def initial_model(cfg: Config) -> InitialModel | None:
    """The weights and tokenizer ``train.init_from`` names (None where it is not set), checked
    before any work: a folder that is missing, quantized or writes another ``data.target`` is one
    error line."""
    if cfg.train.init_from is None:
        return None
    try:
        folder, init_cfg, tokenizer, _, quantization = read_model_folder(cfg.train.init_from)
    except VantageError as exc:
        raise ConfigError(f"train.init_from: {exc}") from None
    if quantization:
        raise ConfigError(f"train.init_from: {folder} holds {quantization.get('bits')}-bit weights; start from "
                          f"the float run or checkpoint it was exported from")
    if init_cfg.data.target != cfg.data.target:
        raise ConfigError(f"train.init_from: {folder} writes data.target {init_cfg.data.target!r}, this config "
                          f"{cfg.data.target!r}; set data.target: {init_cfg.data.target}")
    return InitialModel(folder, tokenizer)


def record_start(folder: Path, cfg: Config, data: TrainingData, resume: bool) -> None:
    """data.json (what each split holds); on resume, config.yaml again (its resumable fields may
    have changed)."""
    if resume:
        (folder / "config.yaml").write_text(dump_config(cfg))
    record = {"train": data.train.record(), "validation": data.validation.record() if data.validation else None}
    (folder / "data.json").write_text(json.dumps(record, indent=2, default=str))


def nudge_routers(model: Any, record: dict) -> None:
    """After each update, a router that balances itself (the aux-loss-free bias) sees the step's
    expert load."""
    if record.get("expert_load") and hasattr(model, "update_routers"):
        model.update_routers(mx.array(record["expert_load"]))


def resume_trainer(trainer: Trainer, folder: Path, best: dict, world: World,
                   say: Callable[[str], None]) -> tuple[int, dict]:
    """Restore ``trainer`` from ``checkpoints/last`` and drop the metrics past its step; the
    global batches drawn by then, and the best checkpoint's record (``best`` when it has none)."""
    state = trainer.restore(folder / "checkpoints" / "last")
    say(f"resuming at step {trainer.step}")
    if world.is_main:
        trim_metrics(folder, trainer.step)
    return state["batches"], state.get("best", best)


def fit(run: Run, callbacks: Sequence[Callback], clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train ``run`` until ``train.steps``, the ``train.minutes`` budget (read on ``clock``, in
    seconds) or Ctrl-C, calling ``callbacks`` after each step and at the end (on_end in reverse
    order). Returns the run's summary, or ``{"stopped": "interrupted", ...}`` after Ctrl-C."""
    try:
        outcome = train_steps(run, callbacks, clock)
    except TrainingDiverged as exc:
        for callback in reversed(callbacks):
            callback.on_end(run, "diverged")
        raise TrainingDiverged(f"{exc}; {last_good_checkpoint(run.folder)}") from None
    for callback in reversed(callbacks):
        callback.on_end(run, outcome)
    if outcome == "interrupted":
        return {"stopped": outcome, "step": run.trainer.step, "run_dir": str(run.folder)}
    run.world.barrier()
    return run.summary


def train_steps(run: Run, callbacks: Sequence[Callback], clock: Callable[[], float]) -> Outcome:
    """Optimizer steps, each followed by the callbacks' on_step, until training ends; how it ended."""
    train_cfg = run.cfg.train
    budget_s = train_cfg.minutes * 60 if train_cfg.minutes else None
    t_train = clock()
    try:
        with StopFlag() as flag:
            while run.trainer.step < train_cfg.steps:
                if budget_s is not None and clock() - t_train > budget_s:
                    run.telemetry.write(f"train.minutes: the {train_cfg.minutes:g}-minute budget ends training "
                                        f"at step {run.trainer.step} of {train_cfg.steps}")
                    break
                record = train_step(run)
                for callback in callbacks:
                    callback.on_step(run, record)
                if flag.stop:
                    return "interrupted"
    except KeyboardInterrupt:
        return "interrupted"
    return "finished"


def train_step(run: Run) -> dict:
    """One optimizer update on the next global batch (``train.grad_accum`` micro-batches); the
    trainer's record with the step's time and throughput."""
    t0 = time.perf_counter()
    micro = []
    for _ in range(run.cfg.train.grad_accum):
        batch = next(run.batches)
        run.batches_drawn += 1
        micro.append(model_arrays(run.model, batch, run.cfg.train.pack_padding))
    record = run.trainer.train_step(micro)
    seconds = time.perf_counter() - t0
    return {**record, "tokens_per_s": record["tokens"] / seconds, "step_s": seconds}


def last_good_checkpoint(folder: Path) -> str:
    """Where a run that diverged can continue from, in words."""
    last = folder / "checkpoints" / "last"
    if last.exists() or last.with_name("last.old").exists():
        return f"the last good checkpoint is {last} (step {load_trainer_state(last)['step']})"
    return "no checkpoint was written yet"
