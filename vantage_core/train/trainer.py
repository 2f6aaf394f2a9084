"""The training step and loop: AdamW with warmup then cosine decay, gradient accumulation and
clipping, data parallelism, a compiled step, NaN guard, Ctrl-C and periodic checkpoints.

:class:`Trainer` knows nothing of text-to-SQL: it takes a model, a loss function
``loss_fn(model, arrays) -> (loss, metrics)`` and batches of arrays. :func:`build_run` in
:mod:`vantage_core.train.run` assembles those from a config.
"""

from __future__ import annotations

import math
import signal
import time
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterable, Iterator

import numpy as np

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from vantage_core import kernels
from vantage_core.config import TrainConfig
from vantage_core.errors import VantageError
from vantage_core.train.distributed import World
from vantage_core.train.precision import resolve_precision


class TrainingDiverged(VantageError):
    """The loss became NaN or infinite."""


def lr_schedule(cfg: TrainConfig) -> Callable[[mx.array], mx.array]:
    """Linear warmup from 0 to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    warmup = min(cfg.warmup_steps, cfg.steps)
    decay = optim.cosine_decay(cfg.lr, max(cfg.steps - warmup, 1), end=cfg.lr * cfg.min_lr_ratio)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, cfg.lr, warmup), decay], [warmup])


class AdamW(optim.AdamW):
    """``mlx.optimizers.AdamW`` (same state, same checkpoints) whose step is one multi-tensor
    kernel (:func:`vantage_core.kernels.adamw`: threaded on the CPU) instead of a kernel per
    tensor; ``scale`` multiplies the gradients on the way in (the trainer's 1 / tokens and
    clipping), so they are read once."""

    def apply_gradients(self, gradients: dict, parameters: dict, scale: mx.array | float = 1.0) -> dict:
        if not self._initialized:
            self.init(gradients)
        for name, scheduler in self._schedulers.items():
            self.state[name] = scheduler(self.step)
        self.state["step"] = self.step + 1
        grads = tree_flatten(gradients)
        params = dict(tree_flatten(parameters))
        states = [_leaf(self.state, key) for key, _ in grads]
        settings = kernels.AdamWSettings(tuple(self.betas), self.eps, self.weight_decay)
        new_p, new_m, new_v = kernels.adamw([params[k] for k, _ in grads], [g for _, g in grads],
                                            [st["m"] for st in states], [st["v"] for st in states],
                                            self.learning_rate, mx.array(scale, mx.float32), settings)
        for st, m, v in zip(states, new_m, new_v):
            st["m"], st["v"] = m, v
        return tree_unflatten(list(zip((k for k, _ in grads), new_p)))


def _leaf(tree, key: str) -> dict:
    """The entry of a nested dict/list tree at a ``tree_flatten`` key ("layers.0.attn.weight")."""
    for part in key.split("."):
        tree = tree[int(part)] if isinstance(tree, list) else tree[part]
    return tree


def build_optimizer(cfg: TrainConfig) -> optim.Optimizer:
    # beta2 0.95: steadier than 0.999 for short transformer runs with spiky router gradients.
    return AdamW(learning_rate=lr_schedule(cfg), betas=[0.9, 0.95], eps=1e-8, weight_decay=cfg.weight_decay)


def expert_load_shares(metrics: dict) -> list[list[float]] | None:
    """Per MoE layer, the share of routed tokens each expert received, from a loss's metrics.

    Accepts ``metrics["expert_load"]`` as a list of per-layer arrays (counts or shares) or an
    (L, E) array, or per-layer entries ``load/<layer>``.
    """
    loads = metrics.get("expert_load")
    if loads is None:
        loads = metrics.get("loads")
    if loads is not None and getattr(loads, "size", 1) == 0:
        return None
    if loads is None:
        keyed = sorted((k for k in metrics if k.startswith("load/")), key=lambda k: int(k.split("/")[1]))
        loads = [metrics[k] for k in keyed] or None
    if loads is None:
        return None
    rows = [np.asarray(l, dtype=np.float64).reshape(-1) for l in loads]
    return [(r / r.sum()).tolist() if r.sum() > 0 else r.tolist() for r in rows]


class WeightAverage:
    """An exponential moving average of a model's trainable weights: ``decay`` per update, ramped
    up as ``(1 + step) / (10 + step)`` over the first updates so the first weights weigh little."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.weights = dict(tree_flatten(model.trainable_parameters()))

    def update(self, model: nn.Module, step: int) -> None:
        rate = 1.0 - min(self.decay, (1 + step) / (10 + step))
        current = dict(tree_flatten(model.trainable_parameters()))
        self.weights = {k: w + rate * (current[k] - w) for k, w in self.weights.items()}  # lazy: the step evaluates it

    @contextmanager
    def applied(self, model: nn.Module) -> Iterator[dict]:
        """Inside, ``model`` holds the averaged weights; yields the raw ones, put back after."""
        raw = dict(tree_flatten(model.trainable_parameters()))
        model.update(tree_unflatten(list(self.weights.items())))
        try:
            yield raw
        finally:
            model.update(tree_unflatten(list(raw.items())))


class Trainer:
    """One model's optimizer and step functions.

    ``loss_fn(model, arrays)`` returns ``(loss, metrics)``; ``loss`` is a mean over the batch's
    loss tokens, ``arrays["loss_mask"]`` marks them. Micro-batch gradients are weighted by their
    loss-token counts and summed across micro-batches and ranks, so accumulation and data
    parallelism compute the same update as one big batch (exactly so for the token-mean loss).
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, cfg: TrainConfig, world: World | None = None,
                 after_update: Callable[[nn.Module, dict], None] | None = None, seed: int = 0):
        self.model, self.loss_fn, self.cfg, self.seed = model, loss_fn, cfg, seed
        self.precision = resolve_precision(cfg.precision)  # the GEMMs' precision, for every step
        self.world = world or World(None)
        self.after_update = after_update  # e.g. the aux-loss-free router's bias nudge
        self.schedule = lr_schedule(cfg)
        self.optimizer = build_optimizer(cfg)
        self.optimizer.init(model.trainable_parameters())
        self.step = 0  # optimizer updates done
        self.notes: list[str] = []  # things the caller should tell the user once
        self.average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay else None
        self._build()

    def _build(self) -> None:
        """(Re)build the step functions; call again after replacing the optimizer state."""
        model, optimizer, world = self.model, self.optimizer, self.world
        loss_fn, precision = self.loss_fn, self.precision.name

        def weighted_loss(model, arrays, n):
            # the token-weighted loss: its gradient is the micro-batch's share of the sum, with
            # no pass over the gradients to scale them; the backward pass's GEMMs follow the
            # forward pass's precision (the bf16 product's own vjp)
            with kernels.matmul_precision(precision):
                loss, metrics = loss_fn(model, arrays)
            return loss * n, (loss, metrics)

        loss_and_grad = nn.value_and_grad(model, weighted_loss)

        def grad_step(arrays):
            n = arrays["loss_mask"].astype(mx.float32).sum()
            (_, (loss, metrics)), grads = loss_and_grad(model, arrays, n)
            return loss, metrics, grads, n

        clip = self.cfg.grad_clip

        def update_step(grad_sum, n_sum):
            # the mean gradient is grad_sum / n_total, clipped to norm `clip`: one factor that
            # the optimizer applies as it reads the sums
            grad_sum, n_total = world.sum_grads(grad_sum), world.all_sum(n_sum)
            grad_norm = mx.sqrt(sum(mx.sum(mx.square(g)) for _, g in tree_flatten(grad_sum))) / n_total
            clipped = mx.minimum(clip / (grad_norm + 1e-6), 1.0) if clip > 0 else 1.0  # as optim.clip_grad_norm
            model.update(optimizer.apply_gradients(grad_sum, model, clipped / n_total))
            return grad_norm

        self._plain_grad_step = grad_step
        if self.cfg.compile:
            state = [model.state, optimizer.state, mx.random.state]
            grad_state = [model.state, mx.random.state]  # the optimizer is not read here
            self._grad_step = mx.compile(grad_step, inputs=grad_state, outputs=grad_state)
            self._update_step = mx.compile(update_step, inputs=state, outputs=state)
        else:
            self._grad_step, self._update_step = grad_step, update_step

    def _grads(self, arrays):
        """The compiled gradient step; where ``mx.compile`` cannot trace it (a model that reads
        values on the host during its forward pass, like the sparse dispatch planned in numpy, or
        a graph MLX's compiler refuses), it falls back to the uncompiled step, once, with a note
        (the optimizer update stays compiled). A real error in the model raises again there."""
        if self._grad_step is self._plain_grad_step:
            return self._grad_step(arrays)
        params = tree_flatten(self.model.parameters())  # references: a failed trace leaves tracers behind
        try:
            return self._grad_step(arrays)
        except (ValueError, IndexError, RuntimeError) as exc:
            self.model.update(tree_unflatten(params))
            mx.random.seed(self.seed * 1_000_003 + self.step)
            self._grad_step = self._plain_grad_step
            why = ("the model's forward pass reads arrays on the host (sparse dispatch)" if "eval" in str(exc).lower()
                   else f"mx.compile could not trace it ({type(exc).__name__}: {exc})")
            self.notes.append(f"train.compile: {why}, so the gradient step runs uncompiled; the "
                              "optimizer update is compiled")
            return self._grad_step(arrays)

    def restore(self, path) -> dict:
        """Continue from a checkpoint: weights, optimizer, RNG; returns its trainer state."""
        from vantage_core.model.io import restore_checkpoint, restore_training_weights

        state = restore_checkpoint(path, model=self.model, optimizer=self.optimizer)
        if self.average is not None:
            self.average = WeightAverage(self.model, self.average.decay)  # the checkpoint's weights
            restore_training_weights(path, self.model)
        self.step = int(state["step"])
        self._build()  # the compiled steps captured the old optimizer state
        return state

    def averaged(self):
        """A context in which the model holds the weights to score and save (the moving average
        where ``train.ema_decay`` is set); it yields the raw training weights, or None."""
        return self.average.applied(self.model) if self.average is not None else nullcontext()

    def train_step(self, micro_batches: list[dict]) -> dict:
        """One optimizer update over ``micro_batches`` (this rank's share of the global batch).

        Returns the step's metrics; raises :class:`TrainingDiverged` before updating the weights
        when the loss is not finite.
        """
        lr = self.schedule(mx.array(self.step)).item()  # the rate this update uses
        # Randomness (router noise, dropout) drawn from (seed, step): a resumed run draws the same.
        mx.random.seed(self.seed * 1_000_003 + self.step)
        grad_sum, n_sum, loss_sum, metric_sums = None, mx.array(0.0), mx.array(0.0), {}
        loads = []
        # input tokens, without padding (for tokens/s); a batch without a padding mask counts all
        n_input = sum(float(a["padding_mask"].sum()) if "padding_mask" in a else float(a["tokens"].size)
                      for a in micro_batches)
        for arrays in micro_batches:
            loss, metrics, grads, n = self._grads(arrays)
            grad_sum = grads if grad_sum is None else tree_map(mx.add, grad_sum, grads)
            n_sum = n_sum + n
            loss_sum = loss_sum + loss * n
            for k, v in metrics.items():
                if isinstance(v, mx.array) and v.ndim == 0 and k not in ("loss", "tokens"):
                    metric_sums[k] = metric_sums.get(k, 0.0) + v * n
            loads.append(expert_load_shares(metrics))
        # The step's scalars and expert loads cross the ranks in one message.
        keys = sorted(metric_sums)
        local_loads = None
        if loads and loads[0] is not None:
            local_loads = mx.array(np.mean(np.asarray(loads, dtype=np.float64), axis=0).astype(np.float32))
        summed = self.world.sum_scalars([n_sum, loss_sum, mx.array(n_input)] + [metric_sums[k] for k in keys] +
                                        ([local_loads] if local_loads is not None else []))
        n_total, loss = summed[0], summed[1] / summed[0]
        mx.eval(loss, grad_sum, n_sum)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDiverged(f"step {self.step + 1}: the loss is {loss_value}; the weights were not "
                                   f"updated. Lower train.lr (now {self.cfg.lr}) or train.grad_clip, or "
                                   f"check the data")
        grad_norm = self._update_step(grad_sum, n_sum)
        if self.average is not None:
            self.average.update(self.model, self.step)
        mx.eval(self.model.state, self.optimizer.state, grad_norm, self.average.weights if self.average else [])
        self.step += 1
        record = {"loss": loss_value, "lr": lr, "grad_norm": grad_norm.item(),
                  "loss_tokens": int(n_total.item()), "tokens": int(summed[2].item())}
        for i, k in enumerate(keys):
            record[k] = (summed[3 + i] / n_total).item()
        if local_loads is not None:
            # every rank sees the mean over all ranks, so load-driven updates stay identical
            record["expert_load"] = np.array(summed[-1] / self.world.size).tolist()
        if self.after_update is not None:
            self.after_update(self.model, record)
        return record


class StopFlag:
    """Turns the first Ctrl-C (SIGINT) into a flag the loop checks between steps, so the
    checkpoint it then writes is consistent; a second Ctrl-C interrupts at once."""

    def __init__(self):
        self.stop = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.stop:
            raise KeyboardInterrupt
        self.stop = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def timed_batches(batches: Iterable[list[dict]]):
    """Yield ``(micro_batches, seconds spent fetching them)``."""
    it = iter(batches)
    while True:
        t = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        yield item, time.perf_counter() - t
