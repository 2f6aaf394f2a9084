"""Each fused kernel of vantage_core/kernels against PyTorch's equivalent and MLX's own ops, on the
same float32 sizes (8.4M elements each), forward and forward+backward.

    python benchmarks/kernel_speed.py [--repeats 7] [--only swiglu,rms_norm,cross_entropy,softmax,causal_softmax]

PyTorch runs in its own subprocess (it loads another BLAS; these kernels use none). The
backward timings include the forward pass: MLX's ``mx.vjp`` and PyTorch's ``autograd.grad``
with a fixed random cotangent. Times are the minimum over the repeats after one warm-up. (Not
named kernels.py: this folder is on sys.path when a script runs, and transformers imports a
package called ``kernels``.)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

# name: (input shape, what it is)
CASES = {
    "swiglu": ((16384, 1024), "silu(gate) * up of a (16384, 2 x 512) [gate | up]"),
    "rms_norm": ((32768, 256), "RMSNorm over 256 with a weight"),
    "cross_entropy": ((1024, 8192), "per-row cross-entropy over 8192 classes"),
    "softmax": ((32, 4, 256, 256), "softmax over the last axis"),
    "causal_softmax": ((32, 4, 256, 256), "causal softmax (attention), PyTorch: masked_fill then softmax"),
}


def best(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def run_mlx(name: str, repeats: int, native: bool) -> dict:
    import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
    import mlx.core as mx

    from vantage_core import kernels

    shape = CASES[name][0]
    x = mx.random.normal(shape, key=mx.random.key(0))
    w = mx.random.normal(shape[-1:], key=mx.random.key(1))
    targets = mx.random.randint(0, shape[-1], shape[:-1], key=mx.random.key(2))
    fn = {"swiglu": lambda a: kernels.swiglu(a),
          "rms_norm": lambda a: kernels.rms_norm(a, w, 1e-5),
          "cross_entropy": lambda a: kernels.cross_entropy(a, targets),
          "softmax": lambda a: kernels.softmax(a),
          "causal_softmax": lambda a: kernels.softmax(a, causal=True)}[name]
    with kernels.enabled(native):
        out = fn(x)
        mx.eval(out)
        cot = mx.random.normal(out.shape, key=mx.random.key(3))
        mx.eval(x, cot, targets, w)
        fwd = best(lambda: mx.eval(fn(x)), repeats)
        bwd = best(lambda: mx.eval(mx.vjp(fn, [x], [cot])), repeats)
    return {"forward": fwd, "backward": bwd}


def run_torch(name: str, repeats: int) -> dict:
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    shape = CASES[name][0]
    x = torch.randn(shape, requires_grad=True)
    w = torch.randn(shape[-1])
    targets = torch.randint(0, shape[-1], shape[:-1])
    mask = torch.ones(shape[-2], shape[-1], dtype=torch.bool).triu(1)

    def swiglu(a):
        gate, up = a.chunk(2, dim=-1)
        return F.silu(gate) * up

    fn = {"swiglu": swiglu,
          "rms_norm": lambda a: F.rms_norm(a, (shape[-1],), w, 1e-5),
          "cross_entropy": lambda a: F.cross_entropy(a, targets, reduction="none"),
          "softmax": lambda a: torch.softmax(a, dim=-1),
          "causal_softmax": lambda a: torch.softmax(a.masked_fill(mask, float("-inf")), dim=-1)}[name]
    with torch.no_grad():
        cot = torch.randn(fn(x).shape)
    with torch.no_grad():
        fwd = best(lambda: fn(x), repeats)
    bwd = best(lambda: torch.autograd.grad(fn(x), x, cot), repeats)
    return {"forward": fwd, "backward": bwd}


def child(kind: str, name: str, repeats: int) -> dict:
    if kind == "torch":
        return run_torch(name, repeats)
    return run_mlx(name, repeats, native=kind == "native")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child[0], a.child[1], a.repeats)))
        return
    import vantage_core.kernels as kernels

    print(f"native kernels: {kernels.status().reason}; min of {a.repeats} after a warm-up; ms")
    print("| kernel | shape | pass | MLX ops | native | PyTorch | native / PyTorch | MLX ops / native |")
    print("|---|---|---|---|---|---|---|---|")
    for name in a.only.split(","):
        results = {}
        for kind in ("mlx_ops", "native", "torch"):
            proc = subprocess.run([sys.executable, __file__, "--child", kind, name, "--repeats", str(a.repeats)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                print(f"{name} {kind}: skipped: {(proc.stderr.strip().splitlines() or ['?'])[-1]}", file=sys.stderr)
        for phase, label in (("forward", "forward"), ("backward", "forward+backward")):
            ms = {k: v[phase] for k, v in results.items()}
            cell = lambda k: f"{ms[k]:.1f}" if k in ms else "-"  # noqa: E731
            vs_torch = f"{ms['native'] / ms['torch']:.2f}x" if {"native", "torch"} <= ms.keys() else "-"
            speedup = f"{ms['mlx_ops'] / ms['native']:.1f}x" if {"native", "mlx_ops"} <= ms.keys() else "-"
            print(f"| {name} | {CASES[name][0]} | {label} | {cell('mlx_ops')} | {cell('native')} | {cell('torch')} "
                  f"| {vs_torch} | {speedup} |")


if __name__ == "__main__":
    main()
