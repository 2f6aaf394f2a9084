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
"""

from __future__ import annotations

import json
import shutil
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from vantage_core.config import Config, dump_config
from vantage_core.errors import ConfigError, VantageError
from vantage_core.folders import check_output_folder, output_path, swap_in
from vantage_core.model.io import load_trainer_state, plugin_list, resolve_checkpoint, save_checkpoint
from vantage_core.train.distill import TEACHER_FIELDS, teacher_folders, teacher_targets
from vantage_core.train.distributed import World, init_world
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
    """What training reads, for either target format: the tokenizer (or action vocabulary),
    the prepared train and validation splits, and how rows of the train split become a batch
    (``collate(rows, index)``; ``index``: the global training batch's, 0 by default)."""

    def __init__(self, tokenizer: Any, train: Any, validation: Any, collate: Callable[[Any], dict]):
        self.tokenizer, self.train, self.validation, self.collate = tokenizer, train, validation, collate


def token_data(cfg: Config, registry: Any, world: World, tok_dir: Path, say: Callable[[str], None]) -> TrainingData:
    """``data.target: tokens``: a tokenizer trained on the corpus, splits tokenized and cached."""
    from vantage_core.config import plugin_params
    from vantage_core.data.batching import make_batch
    from vantage_core.data.pipeline import load_split, prepare_split, tokenizer_corpus
    from vantage_core.data.tokenizer import load_tokenizer

    train_split = _main_first(world, lambda: load_split(cfg.data, "train", registry, say))

    def get_tokenizer():
        if (tok_dir / "tokenizer.json").exists():
            return load_tokenizer(tok_dir, registry)
        tok = registry.build("tokenizer", cfg.data.tokenizer.name, **plugin_params(cfg.data.tokenizer))
        say(f"training the {cfg.data.tokenizer.name} tokenizer on {len(train_split.examples)} examples")
        return tok.train(list(tokenizer_corpus(train_split, cfg.data.serialization)), tok_dir)

    tokenizer = _main_first(world, get_tokenizer)
    prepared = _main_first(world, lambda: prepare_split(cfg.data, "train", tokenizer, registry=registry,
                                                        max_seq_len=cfg.model.max_seq_len, split=train_split))
    validation = None
    if cfg.data.validation and world.is_main:
        validation = prepare_split(cfg.data, "validation", tokenizer, registry=registry, echo=say)
    return TrainingData(tokenizer, prepared, validation, lambda rows, index=0: make_batch(prepared, rows, tokenizer.pad_id))


def question_tokenizer(cfg: Config, registry: Any) -> Any:
    """The tokenizer of the schema encoder's question pieces (``data.target: actions``)."""
    from vantage_core.config import plugin_params

    spec = cfg.model.schema_encoder
    encoder = registry.build("schema_encoder", spec.name, cfg.model.d_model, None, **plugin_params(spec))
    if not hasattr(encoder, "question_tokenizer"):
        raise ConfigError(f"model.schema_encoder: {spec.name!r} has no question_tokenizer; data.target: actions "
                          f"needs a question-aware encoder (linked)")
    return encoder.question_tokenizer


def action_data(cfg: Config, registry: Any, world: World, tok_dir: Path, say: Callable[[str], None],
                progress: bool = True) -> TrainingData:
    """``data.target: actions``: featurized splits (cached) and the action vocabulary learned
    from the training SQL."""
    from vantage_core.config import plugin_params
    from vantage_core.data.actions import collate_rows, prepare_action_split, vocab_corpus
    from vantage_core.data.tokenizer import load_tokenizer

    qtok = question_tokenizer(cfg, registry)
    train_split = _main_first(world, lambda: prepare_action_split(cfg.data, "train", qtok, registry=registry,
                                                                  echo=say, progress=progress))

    def get_vocab():
        if (tok_dir / "tokenizer.json").exists():
            return load_tokenizer(tok_dir, registry)
        tok = registry.build("tokenizer", cfg.data.tokenizer.name, **plugin_params(cfg.data.tokenizer))
        return tok.train(vocab_corpus(train_split), tok_dir)

    vocab = _main_first(world, get_vocab)
    wrong = [t for t in set(vocab_corpus(train_split)) if len(vocab.encode(t)) != 1][:3]
    if wrong:
        raise ConfigError(f"data.tokenizer: {cfg.data.tokenizer.name!r} does not give one id per SQL action "
                          f"({wrong}); data.target: actions needs an action vocabulary (name: sql_actions)")
    validation = None
    if cfg.data.validation and world.is_main:
        validation = prepare_action_split(cfg.data, "validation", qtok, registry=registry, echo=say, progress=progress)
    def collate(rows, index=0):  # training batches: data.link_dropout hides some name matches
        return collate_rows(train_split, rows, vocab, cfg.data.link_dropout, cfg.run.seed, index)

    return TrainingData(vocab, train_split, validation, collate)


def count_parameters(model: Any) -> tuple[int, int]:
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    return total, trainable


def train(cfg: Config, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
          echo: Callable[[str], None] = print, world: World | None = None,
          clock: Callable[[], float] = time.perf_counter) -> dict:
    """Train the model ``cfg`` describes; return the run's summary (also in summary.json).
    ``clock``: what ``train.minutes`` is measured with (seconds)."""
    from vantage_core.model import build_model, loss as model_loss
    from vantage_core.plugins import registry as default_registry

    world = world or init_world()
    say = echo if world.is_main else (lambda *_: None)
    registry = default_registry()
    run_dir = prepare_run_dir(cfg, resume, overwrite, world)
    teacher_folders(cfg)  # a missing teacher: an error before any work
    t_start = time.perf_counter()
    mx.random.seed(cfg.run.seed)
    with staged_start(run_dir, resume, world) as start_dir:
        if world.is_main and not resume:
            (start_dir / "config.yaml").write_text(dump_config(cfg))
            (start_dir / "plugins.json").write_text(json.dumps(plugin_list(registry), indent=2))

        # -- data and tokenizer (rank 0 first: it fills the caches the others then read)
        tok_dir = start_dir / "tokenizer"
        if cfg.data.target == "actions":
            data = action_data(cfg, registry, world, tok_dir, say, progress)
        else:
            data = token_data(cfg, registry, world, tok_dir, say)
        tokenizer, prepared, validation = data.tokenizer, data.train, data.validation
        say(f"train: {len(prepared)} examples; validation: {len(validation) if validation else 0}; "
            f"vocabulary {tokenizer.vocab_size}; {world.size} process(es)")

        # -- model
        model = build_model(cfg.model, tokenizer, registry)
        mx.eval(model.parameters())
        if hasattr(model.schema_encoder, "precompute"):  # frozen states once, through the content-keyed cache
            texts = [prepared.frozen_texts()] + ([validation.frozen_texts()] if validation is not None else [])
            _main_first(world, lambda: model.schema_encoder.precompute(
                [q for qs, _ in texts for q in qs], [n for _, ns in texts for n in ns], progress=progress))
        # -- train.distill: the teachers' distributions on the training split (cached), carried by the batches
        teachers = _main_first(world, lambda: teacher_targets(cfg, data, start_dir, resume, progress))
    if world.is_main:
        if resume:
            (run_dir / "config.yaml").write_text(dump_config(cfg))  # the resumable fields may have changed
        record = {"train": prepared.record(), "validation": validation.record() if validation else None}
        (run_dir / "data.json").write_text(json.dumps(record, indent=2, default=str))
    total, trainable = count_parameters(model)
    say(f"model: {total / 1e6:.2f}M parameters ({trainable / 1e6:.2f}M trainable)")

    def after_update(m, record):
        if record.get("expert_load") and hasattr(m, "update_routers"):
            m.update_routers(mx.array(record["expert_load"]))

    distill = cfg.train.distill
    loss_fn = partial(model_loss, distill_weight=distill.weight, temperature=distill.temperature) \
        if teachers is not None else model_loss
    trainer = Trainer(model, loss_fn, cfg.train, world, after_update=after_update, seed=cfg.run.seed)
    best = {"metric": cfg.train.select_metric, "value": None, "step": None}
    consumed = 0  # global batches drawn
    if resume:
        state = trainer.restore(run_dir / "checkpoints" / "last")
        consumed, best = state["batches"], state.get("best", best)
        say(f"resuming at step {trainer.step}")
        if world.is_main:
            trim_metrics(run_dir, trainer.step)
    collate = teachers.attach(data.collate, tokenizer.vocab_size) if teachers is not None else data.collate
    batches = ModelBatches(prepared, cfg.train.batch_size, cfg.run.seed, world, collate,
                           cfg.train.bucket_batches).stream(consumed)

    telemetry = Telemetry(run_dir, cfg.to_dict(), cfg.train.loggers, registry, cfg.train.steps,
                          trainer.step, enabled=world.is_main, progress=progress)

    def trainer_state():
        return {"step": trainer.step, "batches": consumed, "best": best, "seed": cfg.run.seed,
                "world_size": world.size}

    def save(name: str) -> None:
        if world.is_main:
            with trainer.averaged() as raw:
                save_checkpoint(run_dir / "checkpoints" / name, model=model, optimizer=trainer.optimizer,
                                trainer_state=trainer_state(), config_yaml=dump_config(cfg),
                                plugins=plugin_list(registry), save_tokenizer=tokenizer.save,
                                training_weights=raw)

    def evaluate(final: bool = False) -> dict[str, float]:
        with trainer.averaged():
            return evaluate_weights(final)

    def evaluate_weights(final: bool) -> dict[str, float]:
        if validation is None or not world.is_main:
            return {}
        from vantage_core.train.evaluation import predict, score, teacher_forced

        if cfg.data.target == "actions":
            t = time.perf_counter()
            scores = teacher_forced(model, validation, tokenizer)
            telemetry.log({"step": trainer.step, "kind": "eval", **scores, "examples": len(validation),
                           "seconds": time.perf_counter() - t})
            return scores
        n = len(validation) if final and cfg.train.eval_examples <= 0 else cfg.train.eval_examples
        t = time.perf_counter()
        preds = predict(model, tokenizer, validation, limit=n, max_new_tokens=cfg.inference.max_new_tokens,
                        progress=progress)
        examples = validation.examples[:len(preds)]
        scores = score(examples, [p["sql"] for p in preds], cfg.evaluate.metrics, out_dir=run_dir / "eval",
                       workers=cfg.evaluate.workers, timeout_s=cfg.evaluate.timeout_s,
                       max_rows=cfg.evaluate.max_rows)
        (run_dir / "eval").mkdir(exist_ok=True)
        with open(run_dir / "eval" / "predictions.jsonl", "w") as f:
            for ex, p in zip(examples, preds):
                f.write(json.dumps({**p, "question": ex.question, "gold": ex.sql, "db_id": ex.db_id}) + "\n")
        telemetry.log({"step": trainer.step, "kind": "eval", **scores, "examples": len(preds),
                       "seconds": time.perf_counter() - t})
        return scores

    stopped = None
    last_scores: dict[str, float] = {}
    budget_s = cfg.train.minutes * 60 if cfg.train.minutes else None
    t_train = clock()
    try:
        with StopFlag() as flag:
            while trainer.step < cfg.train.steps:
                if budget_s is not None and clock() - t_train > budget_s:
                    telemetry.write(f"train.minutes: the {cfg.train.minutes:g}-minute budget ends training "
                                    f"at step {trainer.step} of {cfg.train.steps}")
                    break
                t0 = time.perf_counter()
                micro = []
                for _ in range(cfg.train.grad_accum):
                    b = next(batches)
                    consumed += 1
                    micro.append(model_arrays(model, b, cfg.train.pack_padding))
                record = trainer.train_step(micro)
                dt = time.perf_counter() - t0
                for note in trainer.notes:
                    telemetry.write(f"note: {note}")
                trainer.notes.clear()
                if trainer.step % cfg.train.log_every == 0 or trainer.step == cfg.train.steps:
                    telemetry.log({"step": trainer.step, "kind": "train", **record,
                                   "tokens_per_s": record["tokens"] / dt, "step_s": dt})
                if cfg.train.eval_every and trainer.step % cfg.train.eval_every == 0 \
                        and trainer.step < cfg.train.steps and validation is not None:
                    last_scores = evaluate()
                    value = last_scores.get(cfg.train.select_metric)
                    if value is not None and (best["value"] is None or value > best["value"]):
                        best.update(value=value, step=trainer.step)
                        save("best")
                if cfg.train.save_every and trainer.step % cfg.train.save_every == 0:
                    save("last")
                if flag.stop:
                    stopped = "interrupted"
                    break
    except TrainingDiverged as exc:
        telemetry.close()
        last = run_dir / "checkpoints" / "last"
        kept = f"the last good checkpoint is {last} (step {load_trainer_state(last)['step']})" \
            if (last.exists() or last.with_name("last.old").exists()) else "no checkpoint was written yet"
        raise TrainingDiverged(f"{exc}; {kept}") from None
    except KeyboardInterrupt:
        stopped = "interrupted"
    if stopped:
        save("last")
        telemetry.write(f"interrupted at step {trainer.step}: saved {run_dir / 'checkpoints' / 'last'}; "
                        f"continue with --resume")
        telemetry.close()
        return {"stopped": stopped, "step": trainer.step, "run_dir": str(run_dir)}

    save("last")
    final_scores = {}
    if validation is not None:
        final_scores = evaluate(final=True)
        value = final_scores.get(cfg.train.select_metric)
        if value is not None and (best["value"] is None or value >= best["value"]):
            best.update(value=value, step=trainer.step)
            save("best")
    telemetry.close()
    summary = {}
    if world.is_main:
        summary = summarize_run(run_dir, cfg, final_scores, best, time.perf_counter() - t_start,
                                total, trainable, world.size)
        from vantage_core.train.plot import plot_run

        plot_run(run_dir)
        write_report(run_dir, cfg, summary)
    world.barrier()
    return summary


def summarize_run(run_dir: Path, cfg: Config, final_scores: dict, best: dict, wall_s: float,
                  total_params: int, trainable_params: int, world_size: int) -> dict:
    from vantage_core.train.plot import load_balance
    from vantage_core.train.telemetry import read_metrics

    records = [r for r in read_metrics(run_dir) if r.get("kind") == "train"]
    tail = records[len(records) // 2:] or records  # the steady second half: compile/warm-up excluded
    loads = [r["expert_load"] for r in tail if r.get("expert_load")]
    summary = {
        "run": cfg.run.name, "steps": records[-1]["step"] if records else 0,
        "final_loss": records[-1]["loss"] if records else None,
        "final_ce": records[-1].get("ce") if records else None,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in tail])) if tail else None,
        "load_balance": float(np.mean([load_balance(l) for l in loads])) if loads else None,
        "max_expert_share": float(np.max(np.mean(np.asarray(loads), axis=0))) if loads else None,
        "validation": final_scores, "best": best, "wall_s": wall_s,
        "parameters": total_params, "trainable_parameters": trainable_params, "processes": world_size,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def write_report(run_dir: Path, cfg: Config, summary: dict, extra: str = "") -> Path:
    """A Markdown report of the run beside its plots."""
    lines = [f"# Run `{cfg.run.name}`", "",
             f"- model: d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, {cfg.model.num_experts} "
             f"experts, router `{cfg.model.router.name}`, expert `{cfg.model.expert.name}`, schema encoder "
             f"`{cfg.model.schema_encoder.name}`; {summary['parameters'] / 1e6:.2f}M parameters",
             f"- training: {summary['steps']} steps, batch {cfg.train.batch_size} x {cfg.train.grad_accum}, "
             f"lr {cfg.train.lr}, {summary['processes']} process(es), {summary['wall_s']:.0f} s wall",
             f"- final loss {summary['final_loss']:.4f} (cross-entropy {summary['final_ce']:.4f})"
             if summary.get("final_loss") is not None else "- no training step ran",
             f"- throughput {summary['tokens_per_s']:.0f} tokens/s (median of the second half)"
             if summary.get("tokens_per_s") else "",
             f"- expert load balance {summary['load_balance']:.3f} (1 = even; mean over layers of "
             f"(1/E) / busiest expert's share), busiest expert {summary['max_expert_share']:.3f} of tokens"
             if summary.get("load_balance") is not None else "",
             ""]
    if summary.get("validation"):
        lines += ["## Validation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in summary["validation"].items()]
        best = summary.get("best") or {}
        if best.get("value") is not None:
            lines += ["", f"Best `{best['metric']}` {best['value']:.4f} at step {best['step']} "
                          f"(`checkpoints/best`)."]
        lines.append("")
    lines += ["## Plots", ""]
    for name in ("loss", "expert_load", "eval"):
        if (run_dir / "plots" / f"{name}.png").exists():
            lines.append(f"![{name}](plots/{name}.png)")
    lines.append("")
    if extra:
        lines += [extra, ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(l for l in lines if l is not None) + "\n")
    return path
