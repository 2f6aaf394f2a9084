"""What a training run does besides its optimizer steps, as callbacks of
:func:`vantage_core.train.run.fit`: the step log (telemetry), evaluation with the best checkpoint,
the last checkpoint, and the run's summary and report.

``fit`` calls ``on_step`` in the order of its list and ``on_end`` in reverse, as nested blocks
unwind: a callback may rely on those listed before it, which are still open when it ends. The
standard order (:func:`standard_callbacks`) thus evaluates a step before its periodic save, and
at the end saves the last checkpoint, then evaluates it, then closes the log, then reports.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from vantage_core.config import Config

if TYPE_CHECKING:
    from vantage_core.train.run import Run

Outcome = Literal["finished", "interrupted", "diverged"]
"""How training ended: every step ran (or ``train.minutes`` ran out), Ctrl-C, or a non-finite loss."""


class Callback:
    """One part of a run that reacts to its steps and its end; each hook does nothing unless
    overridden."""

    def on_step(self, run: Run, record: dict) -> None:
        """After each optimizer update; ``record`` is the step's metrics (the trainer's, with
        ``tokens_per_s`` and ``step_s``)."""

    def on_end(self, run: Run, outcome: Outcome) -> None:
        """Once, when training stops."""


class StepLog(Callback):
    """Sends the trainer's notes and the step records (every ``train.log_every`` steps and the
    last) to the run's telemetry; says where an interrupted run was saved; closes the telemetry."""

    def on_step(self, run: Run, record: dict) -> None:
        step, train = run.trainer.step, run.cfg.train
        for note in run.trainer.notes:
            run.telemetry.write(f"note: {note}")
        run.trainer.notes.clear()
        if step % train.log_every == 0 or step == train.steps:
            run.telemetry.log({"step": step, "kind": "train", **record})

    def on_end(self, run: Run, outcome: Outcome) -> None:
        if outcome == "interrupted":
            run.telemetry.write(f"interrupted at step {run.trainer.step}: saved {run.folder / 'checkpoints' / 'last'}; "
                                f"continue with --resume")
        run.telemetry.close()


class Evaluation(Callback):
    """Scores the validation split every ``train.eval_every`` steps and when training finishes,
    with the weights a checkpoint holds (the moving average where ``train.ema_decay`` is set),
    and keeps ``checkpoints/best`` by ``train.select_metric`` (the final weights win a tie)."""

    def on_step(self, run: Run, record: dict) -> None:
        every, step = run.cfg.train.eval_every, run.trainer.step
        if every and step % every == 0 and step < run.cfg.train.steps and run.data.validation is not None:
            self.keep_if_best(run, self.scores(run), ties=False)

    def on_end(self, run: Run, outcome: Outcome) -> None:
        if outcome == "finished" and run.data.validation is not None:
            run.final_scores = self.scores(run, final=True)
            self.keep_if_best(run, run.final_scores, ties=True)

    @staticmethod
    def keep_if_best(run: Run, scores: dict[str, float], ties: bool) -> None:
        value, best = scores.get(run.cfg.train.select_metric), run.best["value"]
        if value is not None and (best is None or value > best or (ties and value == best)):
            run.best.update(value=value, step=run.trainer.step)
            run.save_checkpoint("best")

    @staticmethod
    def scores(run: Run, final: bool = False) -> dict[str, float]:
        """The validation scores (logged as an ``eval`` record): decoded and executed on
        ``train.eval_examples`` examples (all at the end if 0) where the target format decodes its
        validation, else teacher-forced (pointer models)."""
        with run.trainer.averaged():
            t = time.perf_counter()
            if run.data.target.decodes_validation:
                scores, examples = decoded_scores(run, final)
            else:
                from vantage_core.train.evaluation import teacher_forced

                scores = teacher_forced(run.model, run.data.validation, run.data.tokenizer)
                examples = len(run.data.validation)
            run.telemetry.log({"step": run.trainer.step, "kind": "eval", **scores, "examples": examples,
                               "seconds": time.perf_counter() - t})
        return scores


def decoded_scores(run: Run, final: bool) -> tuple[dict[str, float], int]:
    """Decode validation questions, score the SQL and write ``eval/predictions.jsonl``; the scores
    and the number of questions."""
    from vantage_core.train.evaluation import predict, score

    cfg, validation = run.cfg, run.data.validation
    n = len(validation) if final and cfg.train.eval_examples <= 0 else cfg.train.eval_examples
    preds = predict(run.model, run.data.tokenizer, validation, limit=n, max_new_tokens=cfg.inference.max_new_tokens,
                    progress=run.progress)
    examples = validation.examples[:len(preds)]
    eval_dir = run.folder / "eval"
    scores = score(examples, [p["sql"] for p in preds], cfg.evaluate.metrics, out_dir=eval_dir,
                   workers=cfg.evaluate.workers, timeout_s=cfg.evaluate.timeout_s, max_rows=cfg.evaluate.max_rows)
    eval_dir.mkdir(exist_ok=True)
    with open(eval_dir / "predictions.jsonl", "w") as f:
        for ex, p in zip(examples, preds):
            f.write(json.dumps({**p, "question": ex.question, "gold": ex.sql, "db_id": ex.db_id}) + "\n")
    return scores, len(preds)


class Checkpoints(Callback):
    """Saves ``checkpoints/last`` every ``train.save_every`` steps and when training stops (after
    Ctrl-C too; not after a non-finite loss, which keeps the last good one)."""

    def on_step(self, run: Run, record: dict) -> None:
        every = run.cfg.train.save_every
        if every and run.trainer.step % every == 0:
            run.save_checkpoint("last")

    def on_end(self, run: Run, outcome: Outcome) -> None:
        if outcome != "diverged":
            run.save_checkpoint("last")


class Report(Callback):
    """When training finishes, writes ``summary.json``, the plots and ``report.md`` (rank 0), and
    keeps the summary in ``run.summary``."""

    def on_end(self, run: Run, outcome: Outcome) -> None:
        if outcome != "finished" or not run.world.is_main:
            return
        from vantage_core.train.plot import plot_run

        run.summary = summarize_run(run, time.perf_counter() - run.started)
        plot_run(run.folder)
        write_report(run.folder, run.cfg, run.summary)


def standard_callbacks() -> list[Callback]:
    """What ``vantage train`` does around the steps, in the order it must happen (module docstring)."""
    return [Report(), StepLog(), Evaluation(), Checkpoints()]


def summarize_run(run: Run, wall_s: float) -> dict:
    """The run's headline figures from its metrics (also written to summary.json)."""
    from vantage_core.train.plot import load_balance
    from vantage_core.train.telemetry import read_metrics

    records = [r for r in read_metrics(run.folder) if r.get("kind") == "train"]
    tail = records[len(records) // 2:] or records  # the steady second half: compile/warm-up excluded
    loads = [r["expert_load"] for r in tail if r.get("expert_load")]
    total, trainable = run.parameters
    summary = {
        "run": run.cfg.run.name, "steps": records[-1]["step"] if records else 0,
        "final_loss": records[-1]["loss"] if records else None,
        "final_ce": records[-1].get("ce") if records else None,
        "tokens_per_s": float(np.median([r["tokens_per_s"] for r in tail])) if tail else None,
        "load_balance": float(np.mean([load_balance(l) for l in loads])) if loads else None,
        "max_expert_share": float(np.max(np.mean(np.asarray(loads), axis=0))) if loads else None,
        "validation": run.final_scores, "best": run.best, "wall_s": wall_s,
        "parameters": total, "trainable_parameters": trainable, "processes": run.world.size,
    }
    (run.folder / "summary.json").write_text(json.dumps(summary, indent=2))
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
