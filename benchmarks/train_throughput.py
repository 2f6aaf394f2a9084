"""Training tokens/s of a tiny config with 1 process and with 2 processes (MLX ring backend on
loopback), same global batch; or, with ``--compare kernels``, one process with every CPU
speed-up off (MLX's own ops, glibc's malloc thresholds and every layer over the padding too:
``VANTAGE_NATIVE_KERNELS=0 VANTAGE_MALLOC=default``, ``train.pack_padding=false``), with the
native CPU kernels (vantage_core/kernels) alone, with the kernels and the allocator setting
(vantage_core/allocator.py), and with those and the padding skipped (vantage_core/model/packing.py),
Vantage's default; with ``--compare ranks``, the first and the last of those on one process and
the last on 2 processes; with ``--compare packing``, the default setting with the padding skipped
and not; with ``--compare buckets``, the default setting with the default length buckets and
whole-epoch ones; with ``--compare precision``, the default setting in fp32 and in bf16.

    python benchmarks/train_throughput.py [--config configs/quickstart.yaml] [--steps 40]
    python benchmarks/train_throughput.py --compare kernels --config configs/spider.yaml --steps 60
    python benchmarks/train_throughput.py --compare ranks --config configs/spider.yaml --steps 300

Each setting runs ``vantage train`` into a temporary run directory and reads the median of the
per-step tokens/s over the second half of training from its summary.json (tokens are the
non-padding input tokens of the global batch) and its steps/s: steps over the seconds they took
in the second half (a mean, not a median: batches of many lengths take many times). With 2
processes on one machine each rank gets half the cores: ``--threads-per-rank`` sets
OPENBLAS_NUM_THREADS for them (default: cores / 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


BEFORE = {"VANTAGE_NATIVE_KERNELS": "0", "VANTAGE_MALLOC": "default"}
PADDED = ["train.pack_padding=false"]
SETTINGS = {
    "processes": [(1, "default", {}, []), (2, "default", {}, [])],
    "kernels": [(1, "mlx_ops, glibc malloc, padded", BEFORE, PADDED),
                (1, "native, glibc malloc, padded", {"VANTAGE_MALLOC": "default"}, PADDED),
                (1, "native + allocator, padded", {}, PADDED),
                (1, "native + allocator + packing", {}, [])],
    # every speed-up off on one process, the default on one process, the default data parallel over the cores
    "ranks": [(1, "mlx_ops, glibc malloc, padded", BEFORE, PADDED), (1, "native + allocator + packing", {}, []),
              (2, "native + allocator + packing", {}, [])],
    "packing": [(1, "native + allocator, padded", {}, PADDED), (1, "native + allocator + packing", {}, [])],
    # the default setting with 32 batches' rows sorted by length together (the default) and with a
    # whole epoch's (train.bucket_batches=0: less padding, other batches)
    "buckets": [(1, "native + allocator + packing, 32-batch buckets", {}, []),
                (1, "native + allocator + packing, whole-epoch buckets", {}, ["train.bucket_batches=0"])],
    # the default setting with float32 GEMMs and with bf16 ones (train.precision, docs/cpu.md)
    "precision": [(1, "fp32", {}, ["train.precision=fp32"]), (1, "bf16", {}, ["train.precision=bf16"])],
}


def run(n_procs: int, config: str, steps: int, out: Path, threads: int | None, extra: list[str],
        label: str, env_extra: dict[str, str]) -> dict:
    sets = [f"train.steps={steps}", "train.eval_every=0", "train.save_every=0", "data.validation=[]",
            f"run.dir={out}", *extra]
    cmd = ["vantage", "train", "--config", config, "--no-progress", "--overwrite"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, **env_extra)
    if n_procs > 1:
        cmd = ["mlx.launch", "-n", str(n_procs), "--backend", "ring"] + cmd
        if threads:
            env["OPENBLAS_NUM_THREADS"] = str(threads)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    summary = json.loads((out / "summary.json").read_text())
    step_s = [r["step_s"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
              if r.get("kind") == "train" and "step_s" in r]
    return {"processes": n_procs, "setting": label, "tokens_per_s": summary["tokens_per_s"],
            "steps_per_s": 1 / statistics.mean(step_s[len(step_s) // 2:]), "wall_s": wall,
            "train_wall_s": summary["wall_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads-per-rank", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    ap.add_argument("--set", dest="extra", action="append", default=[])
    ap.add_argument("--compare", choices=tuple(SETTINGS), default="processes")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (n, label, env_extra, sets) in enumerate(SETTINGS[args.compare]):
            rows.append(run(n, args.config, args.steps, Path(tmp) / f"run{i}", args.threads_per_rank,
                            sets + args.extra, label, env_extra))
            print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    print(f"\n| processes | setting | tokens/s | steps/s (second half) | vs {base['setting']}, "
          f"{base['processes']} process |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} | {r['setting']} | {r['tokens_per_s']:.0f} | {r['steps_per_s']:.2f} "
              f"| {r['steps_per_s'] / base['steps_per_s']:.2f}x |")
    print(f"\n{os.cpu_count()} cores; config {Path(args.config).name}, {args.steps} steps, "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
