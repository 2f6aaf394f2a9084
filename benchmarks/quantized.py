"""Quantized against float on the CPU: MLX's quantized_matmul, the decode of a validation split,
and ``vantage generate`` on databases the model never saw.

    python benchmarks/quantized.py matmul [--repeats 7]
    python benchmarks/quantized.py decode --model fp32=EXPORT --model q8=EXPORT_8 --model q4=EXPORT_4 [--limit N]
                                          [--repeats 3] [--skip-native]
    python benchmarks/quantized.py generate --model fp32=EXPORT ... [--databases 10]

``matmul``: ``quantized_matmul`` (8 and 4 bits, group 64, MLX's affine format) against an fp32
matmul of the same shapes: the models' projections (``d 256 -> 512`` and back) with 1 to 32 rows
(decoding: one row per beam) and with 2048 rows (a training batch). The best of ``--repeats``.

``decode``: each model decodes the validation split of its own config with its own settings
(beam, constraint, execution-guided choice), once per form its weights can run in: a quantized
export ``native`` (through quantized_matmul, what every load did before ``inference.quantized``)
and ``dequantize`` (float layers, made once at load). Reported per arm: seconds (median and min of
``--repeats`` decodes, the arms interleaved so that other load on the machine falls on all),
execution and exact-match accuracy, and how many predictions equal the first arm's. The arms
share one frozen MiniLM, whose states of every question and schema one untimed decode computes
first: the timed decodes differ only in the model.

``generate``: the wall time of ``vantage generate -m MODEL --db DB "question" --run`` as a user
runs it (a new process: imports, loading, the database read for the first time), one question
on each of ``--databases`` databases of the test split (databases that neither training nor
validation saw), the arms interleaved; p50 and p95. Then the same questions in one process
(``Engine.generate`` after the first, every cache of the database emptied: ``latency.py``'s
``--new-databases`` measure) for the time the model itself takes.

The CPU, the BLAS, the threads and what else ran belong with every figure
(``docs/quantization.md``): ``OPENBLAS_NUM_THREADS=1 VANTAGE_KERNEL_THREADS=1`` keep a run on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import numpy as np

SHAPES = [(rows, 256, 512) for rows in (1, 4, 8, 16, 32, 2048)] + [(rows, 512, 256) for rows in (1, 32, 2048)]


def best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def matmul(args) -> None:
    print(f"{cpu_line()}; best of {args.repeats}; OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', '-')}")
    print(f"{'x (M, K) @ W (K, N)':>24} {'fp32 ms':>9} {'q8 ms':>9} {'q4 ms':>9} {'q8/fp32':>8} {'q4/fp32':>8}")
    for m, k, n in SHAPES:
        x, w = mx.random.normal((m, k)), mx.random.normal((n, k)) / k ** 0.5  # (M, K), (N, K): Linear's layout
        mx.eval(x, w)
        fp32 = best_ms(lambda: mx.eval(x @ w.T), args.repeats)
        quant = {}
        for bits in (8, 4):
            q, s, b = mx.quantize(w, group_size=64, bits=bits)
            mx.eval(q, s, b)
            quant[bits] = best_ms(lambda: mx.eval(mx.quantized_matmul(x, q, s, b, transpose=True, group_size=64,
                                                                      bits=bits)), args.repeats)
        print(f"{f'({m}, {k}) @ ({k}, {n})':>24} {fp32:9.3f} {quant[8]:9.3f} {quant[4]:9.3f} "
              f"{quant[8] / fp32:7.1f}x {quant[4] / fp32:7.1f}x")


def cpu_line() -> str:
    """The CPU model and the vector extensions that matter here (AVX2, AVX-512 BF16 and VNNI)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "cpu: unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    has = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags]
    return f"cpu: {name}, {os.cpu_count()} cores, {' '.join(has) or 'no AVX2'}"


def arms(models: list[str], skip_native: bool = False) -> list[tuple[str, str, str]]:
    """``(label, folder, form)`` per arm: a float model once, a quantized one native and dequantized
    (dequantized only with ``skip_native``)."""
    out = []
    for spec in models:
        label, _, folder = spec.partition("=")
        doc = json.loads((Path(folder) / "config.json").read_text()) if (Path(folder) / "config.json").is_file() else {}
        if not doc.get("quantization"):
            out.append((label, folder, "native"))
            continue
        forms = ["dequantize"] if skip_native else ["native", "dequantize"]
        out += [(f"{label} {form}", folder, form) for form in forms]
    return out


def decode(args) -> None:
    from vantage_core.data.pipeline import load_split
    from vantage_core.evaluate.runner import evaluate_predictions
    from vantage_core.inference.engine import Engine, predict_examples

    runs = arms(args.model, args.skip_native)
    engines = {label: Engine.load(folder, quantized=form) for label, folder, form in runs}
    first = engines[runs[0][0]]
    examples = load_split(first.config.data, "validation").examples[:args.limit or None]
    seconds: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    preds: dict[str, list[str]] = {}
    share_frozen_states(engines.values())
    predict_examples(first, examples, progress=False)  # untimed: every arm then finds the frozen states cached
    for _ in range(args.repeats):
        for label, _, _ in runs:
            t = time.perf_counter()
            preds[label] = predict_examples(engines[label], examples, progress=False)
            seconds[label].append(time.perf_counter() - t)
    inf = first.config.inference
    print(f"{cpu_line()}; {len(examples)} validation questions; {inf.decoding} {inf.beam_size}, constraint "
          f"{inf.constraint.name if inf.constraint else 'none'}, execution-guided {inf.execution_guided}; "
          f"{args.repeats} decodes per arm, interleaved", flush=True)
    for label, _, _ in runs:
        print(f"  {label:16} median {statistics.median(seconds[label]):6.2f} s, min {min(seconds[label]):6.2f} s",
              flush=True)
    base = preds[runs[0][0]]
    for label, _, _ in runs:
        summary = evaluate_predictions(examples, preds[label], ["execution", "exact_match"])["summary"]
        same = sum(a == b for a, b in zip(preds[label], base))
        native = label.replace(" dequantize", " native")
        as_native = "" if native not in preds or native == label else \
            f", {sum(a == b for a, b in zip(preds[label], preds[native]))}/{len(base)} as {native}"
        print(f"  {label:16} EX {summary['execution']['execution']:.1%}, EM {summary['exact_match']['exact_match']:.1%} "
              f"({summary['execution']['n']} scored); {same}/{len(base)} the same SQL as {runs[0][0]}{as_native}")


def share_frozen_states(engines) -> None:
    """One frozen MiniLM (weights and cached states) for every engine: all arms have the same."""
    engines = list(engines)
    frozen = getattr(engines[0].model.schema_encoder, "frozen", None)
    for engine in engines[1:]:
        if frozen is not None:
            object.__setattr__(engine.model.schema_encoder, "frozen", frozen)


def cli_copy(folder: str, form: str, root: Path) -> Path:
    """A copy of an export whose stored ``inference.quantized`` is ``form`` (what the CLI loads)."""
    out = root / f"{Path(folder).name}-{form}"
    if not out.exists():
        shutil.copytree(folder, out)
        doc = json.loads((out / "config.json").read_text())
        doc["vantage"]["config"]["inference"]["quantized"] = form
        (out / "config.json").write_text(json.dumps(doc, indent=2))
    return out


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.array(xs), q))


def generate(args) -> None:
    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.engine import Engine

    runs = arms(args.model, args.skip_native)
    root = Path(tempfile.mkdtemp(prefix="vantage-quantized-"))
    folders = {label: cli_copy(folder, form, root) for label, folder, form in runs}
    by_db: dict[str, object] = {}
    for ex in load_split(Engine.load(runs[0][1]).config.data, "test").examples:
        by_db.setdefault(ex.db_id, ex)
    asked = [by_db[db] for db in sorted(by_db)[:args.databases]]
    cli: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    answered: dict[str, int] = {label: 0 for label, _, _ in runs}  # exit status 0: SQL given, and it ran
    for i, ex in enumerate(asked):
        for n, (label, _, _) in enumerate(runs):
            cmd = ["vantage", "generate", "-m", str(folders[label]), "--db", ex.db_paths[0], ex.question, "--run"]
            env = {**os.environ, "VANTAGE_CACHE": str(root / f"cache-{n}-{i}")}  # nothing of this database stored
            t = time.perf_counter()
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            cli[label].append(time.perf_counter() - t)
            answered[label] += done.returncode == 0
    print(f"{cpu_line()}; `vantage generate --run`, one question on each of {len(asked)} unseen test databases, "
          f"a new process each; arms interleaved")
    for label, _, _ in runs:
        print(f"  {label:16} p50 {pct(cli[label], 50):6.2f} s, p95 {pct(cli[label], 95):6.2f} s; "
              f"{answered[label]}/{len(asked)} exited 0 (SQL given and run)")
    in_process(runs, asked)
    shutil.rmtree(root, ignore_errors=True)


def in_process(runs, asked) -> None:
    """Per question in one process, every cache of the database emptied first."""
    sys.path.insert(0, str(Path(__file__).parent))
    from latency import forget_everything

    from vantage_core.inference.engine import Engine

    engines = {label: Engine.load(folder, quantized=form) for label, folder, form in runs}
    times: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    for engine in engines.values():  # warm-up: imports, MiniLM weights
        frozen = getattr(engine.model.schema_encoder, "frozen", None)
        if frozen is not None:  # an empty disk store of its own: no arm reads what another computed
            frozen.cache_dir = Path(tempfile.mkdtemp(prefix="vantage-quantized-"))
        engine.generate(asked[0].question, db_path=asked[0].db_paths[0], run=True)
    for ex in asked:
        for label, engine in engines.items():
            forget_everything(engine)
            t = time.perf_counter()
            engine.generate(ex.question, db_path=ex.db_paths[0], run=True)
            times[label].append(time.perf_counter() - t)
    print("  the same questions in one process, a new database each (caches emptied):")
    for label, _, _ in runs:
        print(f"  {label:16} p50 {pct(times[label], 50) * 1000:6.0f} ms, p95 {pct(times[label], 95) * 1000:6.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("matmul")
    p.add_argument("--repeats", type=int, default=7)
    for name in ("decode", "generate"):
        p = sub.add_parser(name)
        p.add_argument("--model", action="append", required=True, metavar="LABEL=FOLDER",
                       help="An export or checkpoint folder; the first is the reference arm.")
        p.add_argument("--repeats", type=int, default=3)
        p.add_argument("--limit", type=int, default=0, help="decode: at most this many questions (0: all)")
        p.add_argument("--databases", type=int, default=10, help="generate: this many unseen databases")
        p.add_argument("--skip-native", action="store_true",
                       help="Leave out the quantized exports' native arms (float against dequantized only).")
    args = ap.parse_args()
    {"matmul": matmul, "decode": decode, "generate": generate}[args.what](args)


if __name__ == "__main__":
    main()
