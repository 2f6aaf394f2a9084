"""Where one training step of a config (configs/spider.yaml by default) spends its time, on real
training batches: GEMMs, attention, the schema encoder, MoE dispatch, the optimizer update,
Python graph building and the trainer's host-side work, each marked math or not.

    python benchmarks/step_profile.py [--config configs/spider.yaml] [--batches 12] [--repeat 3]
                                      [--skip 0] [--out runs/step_profile]

Writes ``profile.json``, ``profile.md`` and ``profile.png`` (one bar per part, math and non-math
coloured apart) under ``--out``. The batches are the config's own training batches (Spider's need
the data at ``<shared>/data``; the script stops with one line where it is missing).

Method (MLX is lazy: an op costs nothing where it is written and everything where it is evaluated):

- **step**: ``Trainer.train_step`` on each batch, wall time (what ``vantage train`` runs per step).
  Every time below is the least of ``--repeat`` runs on the batch (the run least slowed by
  whatever else the machine ran), then the median over the batches.
- **phases of the same step**, timed apart on the same batch: building the forward+backward graph
  in Python (the call of the uncompiled gradient step, less the time spent inside the dispatch's
  host reads, which evaluate the graph so far); the host reads themselves; evaluating the
  gradients (``mx.eval``); the optimizer update (its compiled call and its evaluation); the rest of
  ``train_step`` (the trainer's host-side reads of the loss, learning rate and metrics).
- **components in isolation**: one forward pass records the real inputs of every decoder
  projection and head (``Linear``), every decoder attention core (``kernels.attention`` called by
  self- and cross-attention), every MoE block and its expert bank (the grouped rows and the
  counts per expert) and the schema encoder (its batch inputs). Each group then runs forward and
  backward alone (``mx.vjp`` with random cotangents, gradients to the weights and the inputs) at
  those shapes, its graph built and evaluated apart; the evaluation time is its math time.
  MoE dispatch = the MoE blocks' forward+backward (built and evaluated, the host reads included)
  less their Python graph building and less their experts' GEMMs: routing, the host-side plan,
  the permutation gathers, the combine and the host synchronisation.
  The decoder's packing gathers (``Packing.pack``/``unpack`` around attention: the padding
  skipped by ``train.pack_padding``) are recorded and timed the same way.
  The schema encoder runs whole, and its projections (``Linear``) and attention cores again
  apart; the rest of it (layer norms, embeddings, the relation terms' gathers, its packing
  gathers, dropout) is their difference.
- **other ops** = the gradient evaluation (host reads + ``mx.eval``) less the isolated
  components and the dispatch: the decoder's norms, activations, embeddings, the loss and the
  pointer/copy scores, which this script does not time apart.
- **unattributed** = the step less its timed phases and the trainer's host reads: what the
  trainer does besides (the schedule, the gradient sum) and the load's noise between the runs
  (it can come out negative). Parts timed alone need not add up to the step exactly.
- **host reads**: calls that move an ``mx.array`` to the host, counted per step and timed (a
  read waits for the graph it reads to be evaluated): ``np.array`` in the MoE dispatch;
  ``.item()``, ``.tolist()``, ``float()`` and ``np.asarray`` in the trainer.
- **shape signatures**: how many of the batches have input shapes no earlier batch had (each
  would make a compiled step trace and compile again).
- **dispatch probe**: the step's MoE blocks, forward+backward at their recorded inputs, with the
  model's dispatch (sorted on the host: one host read per block) and two without host reads
  (every expert on every token; ``mx.gather_mm`` with indices sorted on the device), interleaved.
- **compile probe**: the loss's forward+backward per batch, uncompiled with the model's and with
  the dense dispatch, and compiled with the dense dispatch (no host read, so ``mx.compile`` can
  trace it) on shapes new to it and again (see :func:`compile_probe`).

Shares are ratios within one run; the machine's load moves the absolute times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import vantage_core  # noqa: E402,F401  (the optimized BLAS before mlx)
import mlx.core as mx  # noqa: E402
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten, tree_unflatten  # noqa: E402

from quantized import cpu_line  # noqa: E402
from vantage_core import kernels  # noqa: E402
from vantage_core.model import moe as moe_module  # noqa: E402
from vantage_core.model import transformer  # noqa: E402
from vantage_core.model.packing import Packing  # noqa: E402

MATH = ("decoder GEMMs", "expert GEMMs", "decoder attention", "schema encoder GEMMs", "schema encoder attention",
        "optimizer update")
NON_MATH = ("MoE dispatch", "decoder packing gathers", "Python graph building", "trainer host reads")
TIMED_PARTS = ("decoder GEMMs", "expert GEMMs", "decoder attention", "schema encoder", "decoder packing gathers")


# ------------------------------------------------------------------------------- host reads

class NumpyReads:
    """Stands in for numpy in one module: ``np.array``/``np.asarray`` of an ``mx.array`` counted
    (and timed) as a host read under ``key``."""

    def __init__(self, reads: "HostReads", key: str):
        self.reads, self.key = reads, key

    def array(self, x, *args, **kwargs):
        return self.reads.read(self.key, np.array, x, *args, **kwargs)

    def asarray(self, x, *args, **kwargs):
        return self.reads.read(self.key, np.asarray, x, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(np, name)


class HostReads:
    """Counts and times host reads: ``np.array``/``np.asarray`` of an ``mx.array`` in the MoE
    dispatch (``dispatch``) and in the trainer, and ``.item()``, ``.tolist()`` and ``float()`` of
    an ``mx.array`` anywhere (``trainer``: outside the dispatch, only the trainer makes them)."""

    def __init__(self):
        self.counts, self.seconds = {}, {}

    def reset(self) -> None:
        self.counts, self.seconds = {"dispatch": 0, "trainer": 0}, {"dispatch": 0.0, "trainer": 0.0}

    def read(self, key: str, fn, x, *args, **kwargs):
        start = time.perf_counter()
        out = fn(x, *args, **kwargs)
        if isinstance(x, mx.array):
            self.counts[key] += 1
            self.seconds[key] += time.perf_counter() - start
        return out

    @contextmanager
    def counting(self):
        """Inside, the dispatch's and the trainer's numpy and the array's scalar reads count."""
        from vantage_core.train import trainer as trainer_module

        self.reset()
        saved = [(moe_module, "np", moe_module.np), (trainer_module, "np", trainer_module.np)]
        saved += [(mx.array, name, getattr(mx.array, name)) for name in ("item", "tolist", "__float__")]
        moe_module.np, trainer_module.np = NumpyReads(self, "dispatch"), NumpyReads(self, "trainer")
        for _, name, method in saved[2:]:
            setattr(mx.array, name, self._scalar(method))
        try:
            yield self
        finally:
            for owner, name, value in saved:
                setattr(owner, name, value)

    def _scalar(self, method):
        def read(x, *args):
            return self.read("trainer", method, x, *args)
        return read


# --------------------------------------------------------------------------------- batches

def training_run(config: str, folder: Path):
    """The config's run (model, trainer, batches) in a scratch folder: no checkpoints, no validation."""
    from vantage_core.config import load_config
    from vantage_core.train.run import build_run

    cfg = load_config(config, [f"run.dir={folder}", "train.eval_every=0", "train.save_every=0",
                               "data.validation=[]"])
    return build_run(cfg, overwrite=True, progress=False, echo=lambda *_: None)


def shape_signature(arrays: dict) -> tuple:
    """The shapes of a batch's input arrays (nested dicts included), as a hashable key."""
    return tuple(sorted((k, tuple(v.shape)) for k, v in tree_flatten(arrays)))


# ------------------------------------------------------------------------------ components

@contextmanager
def patched(owner, name: str, replacement):
    before = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, before)


def capture_inputs(model, arrays: dict) -> dict[str, list]:
    """One forward pass of the loss on ``arrays``; the inputs each component received."""
    from vantage_core.model import loss

    seen = {"linear": [], "attention": [], "moe": [], "experts": [], "schema": [], "packing": [],
            "encoder_linear": [], "encoder_attention": []}
    encoder = set(map(id, model.schema_encoder.modules())) if model.schema_encoder is not None else set()
    linear_call, attention, moe_call = transformer.Linear.__call__, kernels.attention, moe_module.MoEBlock.__call__
    encode = type(model).encode_schema
    pack_rows, unpack_rows = Packing.pack, Packing.unpack

    def in_encoder() -> bool:
        """Whether the nearest module up the stack (through pack()/unpack()) is the encoder's."""
        frame = sys._getframe(2)
        while frame is not None and not isinstance(frame.f_locals.get("self"), nn.Module):
            frame = frame.f_back
        return frame is not None and id(frame.f_locals["self"]) in encoder

    def record_pack(self, x):
        if not in_encoder():
            seen["packing"].append((self, x, True))
        return pack_rows(self, x)

    def record_unpack(self, x):
        if not in_encoder():
            seen["packing"].append((self, x, False))
        return unpack_rows(self, x)

    def record_linear(self, x):
        seen["encoder_linear" if id(self) in encoder else "linear"].append((self, x))
        return linear_call(self, x)

    def record_attention(q, k, v, scale, causal=False, bias=None):
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, (transformer.Attention, transformer.CrossAttention)):
            seen["attention"].append((q, k, v, scale, causal, bias))
        elif id(caller) in encoder:
            seen["encoder_attention"].append((q, k, v, scale, causal, bias))
        return attention(q, k, v, scale, causal=causal, bias=bias)

    def record_moe(self, x):
        seen["moe"].append((self, x))
        bank_call = type(self.experts).__call__

        def record_bank(bank, rows, counts):
            seen["experts"].append((bank, rows, list(counts)))
            return bank_call(bank, rows, counts)

        with patched(type(self.experts), "__call__", record_bank):
            return moe_call(self, x)

    def record_schema(self, inputs):
        seen["schema"].append((self, inputs))
        return encode(self, inputs)

    with patched(transformer.Linear, "__call__", record_linear), patched(kernels, "attention", record_attention), \
            patched(moe_module.MoEBlock, "__call__", record_moe), patched(type(model), "encode_schema", record_schema), \
            patched(Packing, "pack", record_pack), patched(Packing, "unpack", record_unpack):
        out = loss(model, arrays)
    mx.eval(out)
    for group in seen.values():  # the recorded inputs, evaluated once, so timing starts from them
        for item in group:
            mx.eval([a for _, a in tree_flatten(list(item[1:])) if isinstance(a, mx.array)])
    return seen


def vjp_seconds(fun, primals: list[mx.array], repeat: int, reads: HostReads | None = None) -> dict[str, float]:
    """Least build and evaluation seconds of ``fun``'s forward+backward (``mx.vjp``, random
    cotangents) over ``repeat`` runs after one warm-up; ``reads``: host reads inside ``fun``,
    their time taken out of the build."""
    outs = fun(*primals)
    cotangents = [mx.random.normal(o.shape).astype(o.dtype) for o in outs]
    mx.eval(cotangents, primals)
    builds, evals, reads_s = [], [], []
    for i in range(repeat + 1):
        if reads is not None:
            reads.reset()
        start = time.perf_counter()
        result = mx.vjp(fun, primals, cotangents)
        built = time.perf_counter()
        mx.eval(result)
        done = time.perf_counter()
        if i:
            r = reads.seconds["dispatch"] if reads is not None else 0.0
            builds.append(built - start - r)
            reads_s.append(r)
            evals.append(done - built)
    return {"build": min(builds), "reads": min(reads_s), "eval": min(evals)}


def module_fun(modules: list, call):
    """``(fun, primals)``: the modules' trainable weights then ``extra`` inputs as a flat list of
    primals; ``fun(*primals)`` puts the weights in and returns ``call(extra)``'s outputs."""
    names = [[k for k, _ in tree_flatten(m.trainable_parameters())] for m in modules]
    weights = [[w for _, w in tree_flatten(m.trainable_parameters())] for m in modules]
    sizes = [len(w) for w in weights]

    def fun(*primals):
        offset = 0
        for m, keys, n in zip(modules, names, sizes):
            m.update(tree_unflatten(list(zip(keys, primals[offset:offset + n]))))
            offset += n
        return call(primals[offset:])

    return fun, [w for ws in weights for w in ws]


def time_linears(items, repeat):
    modules = [m for m, _ in items]
    fun, weights = module_fun(modules, lambda xs: [m(x) for m, x in zip(modules, xs)])
    return vjp_seconds(fun, weights + [x for _, x in items], repeat)


def time_experts(items, repeat):
    banks = [b for b, _, _ in items]
    fun, weights = module_fun(banks, lambda xs: [b(x, c) for (b, _, c), x in zip(items, xs)])
    return vjp_seconds(fun, weights + [x for _, x, _ in items], repeat)


def time_attention(items, repeat):
    def fun(*qkv):
        return [kernels.attention(*qkv[3 * i:3 * i + 3], scale, causal=causal, bias=bias)
                for i, (_, _, _, scale, causal, bias) in enumerate(items)]

    return vjp_seconds(fun, [a for q, k, v, *_ in items for a in (q, k, v)], repeat)


def time_moe(items, repeat, reads: HostReads):
    blocks = [b for b, _ in items]

    def call(xs):
        outs = []
        for block, x in zip(blocks, xs):
            y, routing = block(x)
            outs += [y, sum(routing.aux_losses.values(), mx.array(0.0))]
        return outs

    fun, weights = module_fun(blocks, call)
    with reads.counting():
        return vjp_seconds(fun, weights + [x for _, x in items], repeat, reads)


def time_packing(items, repeat):
    def fun(*xs):
        return [packing.pack(x) if packs else packing.unpack(x) for (packing, _, packs), x in zip(items, xs)]

    return vjp_seconds(fun, [x for _, x, _ in items], repeat)


def time_schema(items, repeat):
    (encoder_owner, inputs), = items
    encoder = encoder_owner.schema_encoder
    fun, weights = module_fun([encoder], lambda _: [encoder.memory(inputs).states])
    return vjp_seconds(fun, weights, repeat)


def component_seconds(model, arrays: dict, repeat: int, reads: HostReads) -> dict[str, dict]:
    """Each component's forward+backward at this batch's shapes, timed alone."""
    seen = capture_inputs(model, arrays)
    out = {"decoder GEMMs": time_linears(seen["linear"], repeat),
           "expert GEMMs": time_experts(seen["experts"], repeat),
           "decoder attention": time_attention(seen["attention"], repeat),
           "MoE blocks": time_moe(seen["moe"], repeat, reads)}
    if seen["schema"]:
        out["schema encoder"] = time_schema(seen["schema"], repeat)
        out["schema encoder GEMMs"] = time_linears(seen["encoder_linear"], repeat)
        out["schema encoder attention"] = time_attention(seen["encoder_attention"], repeat)
    if seen["packing"]:
        out["decoder packing gathers"] = time_packing(seen["packing"], repeat)
    probe = dispatch_probe(seen["moe"], repeat, reads)
    if probe is not None:
        out["dispatch probe"] = probe
    return out


# ------------------------------------------------------------------- dispatch without host reads

def dense_dispatch(block, x: mx.array):
    """Every expert on every token, each output weighted by its combine weight (zero off the
    top-k): no host read, fixed shapes, ``E / k`` times the expert FLOPs. SwiGLU banks only."""
    routing = block.router(x)
    bank, n, e = block.experts, x.shape[0], block.experts.num_experts
    chosen = (routing.indices[..., None] == mx.arange(e)).astype(x.dtype)  # (N, k, E)
    gate = (chosen * routing.weights[..., None].astype(x.dtype)).sum(axis=1)  # (N, E)
    hidden = kernels.swiglu(kernels.matmul(x, mx.concatenate(bank.w_in, axis=1)).reshape(n, e, -1))  # (N, E, h)
    out = mx.matmul(hidden.transpose(1, 0, 2), mx.stack(bank.w_out))  # (E, N, d)
    return (out * gate.T[..., None]).sum(axis=0), routing


def gather_mm_dispatch(block, x: mx.array):
    """Token-slots sorted by expert on the device (``mx.argsort``), one ``mx.gather_mm`` per
    weight with sorted indices (mlx-lm's SwitchGLU formulation): no host read. SwiGLU banks only."""
    routing = block.router(x)
    bank, k = block.experts, routing.indices.shape[1]
    flat = routing.indices.reshape(-1)
    order = mx.argsort(flat)
    experts = flat[order]
    rows = x[order // k][:, None, :]  # (N*k, 1, d)
    hidden = kernels.swiglu(mx.gather_mm(rows, mx.stack(bank.w_in), rhs_indices=experts, sorted_indices=True))
    out = mx.gather_mm(hidden, mx.stack(bank.w_out), rhs_indices=experts, sorted_indices=True)[:, 0, :]
    per_slot = out[mx.argsort(order)].reshape(x.shape[0], k, -1)  # back in token-slot order
    return (per_slot * routing.weights[..., None].astype(out.dtype)).sum(axis=1), routing


DISPATCHES = {"sorted, planned on the host (the model's)": lambda block, x: block(x),
              "dense: every expert on every token": dense_dispatch,
              "gather_mm, sorted on the device": gather_mm_dispatch}


def dispatch_probe(items, repeat: int, reads: HostReads) -> dict[str, float] | None:
    """Forward+backward seconds (built and evaluated) of the MoE blocks at the step's inputs with
    each dispatch of :data:`DISPATCHES`, interleaved run by run; None for banks other than SwiGLU."""
    blocks = [b for b, _ in items]
    if not all(hasattr(b.experts, "w_in") and type(b.experts).__name__ == "SwiGLUExperts" for b in blocks):
        return None
    runs: dict[str, list[float]] = {name: [] for name in DISPATCHES}
    for _ in range(repeat):
        for name, dispatch in DISPATCHES.items():
            def call(xs, dispatch=dispatch):
                outs = []
                for block, x in zip(blocks, xs):
                    y, routing = dispatch(block, x)
                    outs += [y, sum(routing.aux_losses.values(), mx.array(0.0))]
                return outs

            fun, weights = module_fun(blocks, call)
            with reads.counting():
                t = vjp_seconds(fun, weights + [x for _, x in items], 1, reads)
            runs[name].append(t["build"] + t["reads"] + t["eval"])
    return {name: min(v) for name, v in runs.items()}


def dense_block_call(block, x: mx.array):
    """``MoEBlock.__call__`` with :func:`dense_dispatch` (any leading shape)."""
    y, routing = dense_dispatch(block, x.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape), routing


def compile_probe(model, batches: list[dict], repeat: int) -> dict[str, float]:
    """Seconds of the loss's forward+backward per batch (medians over ``batches``): compiled
    (``mx.compile``) with :func:`dense_dispatch` on shapes it has not seen (a trace and compile;
    MLX keeps the compiled CPU kernels on disk, so only a process's first sight of a kernel
    costs a C++ compile), then the least of ``repeat`` interleaved rounds of: uncompiled with the
    model's dispatch, uncompiled with the dense dispatch, and compiled again (the graph reused)."""
    import mlx.nn as mlx_nn

    from vantage_core.model import loss

    def objective(model, arrays):
        return loss(model, arrays)[0]

    plain = mlx_nn.value_and_grad(model, objective)
    state = [model.state, mx.random.state]
    compiled = mx.compile(lambda arrays: plain(model, arrays), inputs=state, outputs=state)
    arms = {"uncompiled, the model's dispatch": (MODEL_CALL, lambda a: plain(model, a)),
            "uncompiled, dense dispatch": (dense_block_call, lambda a: plain(model, a)),
            "compiled, dense dispatch, shapes seen before": (dense_block_call, compiled)}
    times: dict[str, list[float]] = {k: [] for k in ("compiled, dense dispatch, new shapes", *arms)}
    for arrays in batches:
        rounds: dict[str, list[float]] = {k: [] for k in times}
        for i in range(repeat + 1):
            for name, (call, fn) in arms.items() if i else [("compiled, dense dispatch, new shapes",
                                                               (dense_block_call, compiled))]:
                with patched(moe_module.MoEBlock, "__call__", call):
                    start = time.perf_counter()
                    mx.eval(fn(arrays))
                    rounds[name].append(time.perf_counter() - start)
        for name, values in rounds.items():
            times[name].append(min(values))
    return {k: statistics.median(v) for k, v in times.items()}


MODEL_CALL = moe_module.MoEBlock.__call__


# ----------------------------------------------------------------------------------- phases

def step_phases(trainer, arrays: dict, reads: HostReads) -> dict[str, float]:
    """One ``train_step`` on ``arrays`` (wall), then the same step's phases timed apart."""
    with reads.counting():
        start = time.perf_counter()
        trainer.train_step([arrays])
        step = time.perf_counter() - start
        counts, trainer_reads = dict(reads.counts), reads.seconds["trainer"]
    with reads.counting():
        start = time.perf_counter()
        loss, metrics, grads, n = trainer._plain_grad_step(arrays)
        built = time.perf_counter()
        read_s = reads.seconds["dispatch"]
    mx.eval(loss, metrics, grads, n)
    evaluated = time.perf_counter()
    norm = trainer._update_step(grads, n)
    called = time.perf_counter()
    mx.eval(trainer.model.state, trainer.optimizer.state, norm)
    updated = time.perf_counter()
    trainer.step += 1  # the extra update above, so the schedule moves on as in training
    return {"step": step, "graph_build": built - start - read_s, "dispatch_reads": read_s,
            "grad_eval": evaluated - built, "update_call": called - evaluated, "update_eval": updated - called,
            "trainer_reads": trainer_reads, "n_dispatch_reads": counts["dispatch"], "n_trainer_reads": counts["trainer"]}


def least(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each key's minimum over ``runs``: the run least slowed by whatever else the machine ran."""
    return {k: min(r[k] for r in runs) for k in runs[0]}


# ---------------------------------------------------------------------------------- report

def breakdown(phases: dict[str, float], parts: dict[str, dict]) -> dict[str, float]:
    """Milliseconds per step of each part (medians over batches, see the module docstring)."""
    moe = parts["MoE blocks"]
    dispatch = moe["reads"] + moe["eval"] - parts["expert GEMMs"]["eval"]  # built and evaluated, less building
    out = {name: parts[name]["eval"] for name in TIMED_PARTS if name in parts}
    if "schema encoder" in out:  # its GEMMs and attention core apart; the rest of it together
        for name in ("schema encoder GEMMs", "schema encoder attention"):
            out[name] = parts[name]["eval"]
        out["schema encoder, other ops"] = out.pop("schema encoder") - out["schema encoder GEMMs"] - \
            out["schema encoder attention"]
    out["MoE dispatch"] = dispatch
    grad_total = phases["dispatch_reads"] + phases["grad_eval"]
    out["other ops"] = grad_total - sum(out.values())
    out["optimizer update"] = phases["update_eval"]
    out["Python graph building"] = phases["graph_build"] + phases["update_call"]
    out["trainer host reads"] = phases["trainer_reads"]
    measured = phases["graph_build"] + grad_total + phases["update_call"] + phases["update_eval"]
    out["unattributed"] = phases["step"] - measured - phases["trainer_reads"]
    return {k: v * 1e3 for k, v in out.items()}


def kind_of(part: str) -> str:
    if part == "unattributed":
        return "the step less its phases (load noise, trainer bookkeeping)"
    return "math" if part in MATH else "not math" if part in NON_MATH else "mixed"


def markdown(result: dict) -> str:
    ms, step = result["ms_per_step"], result["step_ms"]
    lines = [f"{result['cpu']}; {result['batches']} batches of `{result['config']}`, medians; "
             f"step {step:.1f} ms (`Trainer.train_step`)", "",
             "| part | ms / step | share of the step | kind |", "|---|---|---|---|"]
    for part, value in sorted(ms.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {part} | {value:.1f} | {100 * value / step:.1f}% | {kind_of(part)} |")
    reads = result["host_reads_per_step"]
    lines += ["", f"host reads per step: {reads['dispatch']} in the MoE dispatch (`np.array`), "
              f"{reads['trainer']} in the trainer (`.item()`, `float()`, `np.asarray`); batches with a shape no earlier "
              f"batch had: {result['new_shapes']} of {result['shape_batches']}"]
    if result.get("dispatch_probe_ms"):
        probe = result["dispatch_probe_ms"]
        base = next(iter(probe.values()))
        lines += ["", "the MoE blocks of the step, forward+backward, with each dispatch (interleaved runs):", "",
                  "| dispatch | ms / step | vs the model's |", "|---|---|---|"]
        lines += [f"| {name} | {ms:.1f} | {ms / base:.2f}x |" for name, ms in probe.items()]
    if result.get("compile_probe_ms"):
        probe = result["compile_probe_ms"]
        base = probe["uncompiled, the model's dispatch"]
        lines += ["", "the loss's forward+backward per batch, compiled or not (medians):", "",
                  "| gradient step | ms | vs uncompiled |", "|---|---|---|"]
        lines += [f"| {name} | {ms:.1f} | {ms / base:.2f}x |" for name, ms in probe.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = {"math": "#4c72b0", "not math": "#dd8452", "mixed": "#8c8c8c"}
    items = sorted(((k, v) for k, v in result["ms_per_step"].items() if k != "unattributed"), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.2))
    ax.barh([k for k, _ in items], [max(v, 0.0) for _, v in items], color=[colour[kind_of(k)] for k, _ in items])
    for i, (_, v) in enumerate(items):
        ax.text(max(v, 0.0), i, f" {v:.1f} ({100 * v / result['step_ms']:.0f}%)", va="center", fontsize=8)
    ax.set_xlabel("ms per training step (median)")
    ax.set_title(f"{Path(result['config']).name}: one step {result['step_ms']:.0f} ms "
                 "(blue math, orange not, grey mixed)", fontsize=9)
    ax.set_xlim(0, max(v for _, v in items) * 1.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def profile(config: str, n_batches: int, repeat: int, skip: int = 0) -> dict:
    reads = HostReads()
    with tempfile.TemporaryDirectory() as tmp:
        run = training_run(config, Path(tmp) / "run")
    from vantage_core.train.run import model_arrays

    for _ in range(skip):
        next(run.batches)
    batches = [model_arrays(run.model, next(run.batches), run.cfg.train.pack_padding) for _ in range(n_batches + 2)]
    signatures = [shape_signature(a) for a in batches]
    new_shapes = sum(s not in signatures[:i] for i, s in enumerate(signatures))
    for arrays in batches[:2]:  # warm-up steps
        mx.eval(arrays)
        run.trainer.train_step([arrays])
    phases, parts = [], []
    for arrays in batches[2:]:
        mx.eval(arrays)
        phases.append(least([step_phases(run.trainer, arrays, reads) for _ in range(repeat)]))
        parts.append(component_seconds(run.model, arrays, repeat, reads))
    med_phases = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    med_parts = {name: {k: statistics.median(p[name][k] for p in parts) for k in parts[0][name]} for name in parts[0]}
    probe = med_parts.pop("dispatch probe", None)
    compiled = compile_probe(run.model, batches[2:], repeat) if probe is not None else None
    shown = Path(config).resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    return {"cpu": cpu_line(), "kernels": kernels.status().reason, "config": str(shown), "batches": n_batches,
            "skip": skip,
            "repeat": repeat, "step_ms": med_phases["step"] * 1e3, "ms_per_step": breakdown(med_phases, med_parts),
            "phases_ms": {k: v * 1e3 for k, v in med_phases.items() if not k.startswith("n_")},
            "components_ms": {n: {k: v * 1e3 for k, v in d.items()} for n, d in med_parts.items()},
            "host_reads_per_step": {k: int(med_phases[f"n_{k}_reads"]) for k in ("dispatch", "trainer")},
            "dispatch_probe_ms": {k: v * 1e3 for k, v in probe.items()} if probe else None,
            "compile_probe_ms": {k: v * 1e3 for k, v in compiled.items()} if compiled else None,
            "shape_batches": len(batches), "new_shapes": new_shapes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "spider.yaml"))
    ap.add_argument("--batches", type=int, default=12, help="batches profiled (after 2 warm-up steps)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of the step, its phases and each component per batch")
    ap.add_argument("--skip", type=int, default=0, help="training batches drawn and left before the first one used")
    ap.add_argument("--out", default=str(ROOT / "runs" / "step_profile"))
    args = ap.parse_args()
    from vantage_core.errors import VantageError

    try:
        result = profile(args.config, args.batches, args.repeat, args.skip)
    except VantageError as exc:
        print(f"step_profile: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=2))
    (out / "profile.md").write_text(markdown(result))
    plot(result, out / "profile.png")
    print(markdown(result))
    print(f"written: {out / 'profile.json'}, profile.md, profile.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
