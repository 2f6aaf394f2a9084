"""The bf16 GEMM of mixed-precision training (``train.precision: bf16``) against float32 on the
products of benchmarks/train_step.py's tiny config and one of a d-1024 model, forward and
forward+backward of ``x @ W^T``.

    python benchmarks/bf16_gemm.py [--repeats 7]

Arms: ``fp32`` (MLX's matmul on the BLAS), ``mlx_bf16`` (MLX's own bf16 matmul: the inputs cast
to bf16, the output bf16 too), ``mlx_ops`` (Vantage's fallback: the inputs rounded to bf16 in MLX
ops, then the float32 matmul), and the native bf16 GEMM (``vantage_core/kernels/csrc/gemm_bf16.cpp``)
with each tile kernel this CPU runs. Each time is the minimum over the repeats after one warm-up,
in ms, with its ratio to fp32 (below 1: faster). The first line names the CPU and its flags.
"""

from __future__ import annotations

import argparse
import time

from quantized import cpu_line

# (rows, in, out) of x (rows, in) @ W (out, in)^T: 8 x 256 tokens, d 256, 8 experts of 512, top-2
SHAPES = {
    "attention projection": (2048, 256, 256),
    "expert in (gate|up)": (512, 256, 1024),
    "expert out": (512, 512, 256),
    "vocabulary head": (2048, 256, 8192),
    "d-1024 projection": (4096, 1024, 1024),  # a larger model's product, for the GEMM's own rate
}


def best_ms(fn, repeats: int) -> float:
    import mlx.core as mx

    mx.eval(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        mx.eval(fn())
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def arm_products():
    """name -> product(x, w) for every arm this machine runs."""
    import mlx.core as mx

    from vantage_core import kernels

    def in_bf16(x, w):
        with kernels.matmul_precision("bf16"):
            return kernels.linear(x, w)

    def native(isa):
        def product(x, w):
            kernels._native.set_bf16_gemm_isa(isa)
            return in_bf16(x, w)
        return product

    def mlx_ops(x, w):
        with kernels.enabled(False):
            return in_bf16(x, w)

    arms = {"fp32": lambda x, w: x @ w.T,
            "mlx_bf16": lambda x, w: x.astype(mx.bfloat16) @ w.astype(mx.bfloat16).T,
            "mlx_ops": mlx_ops}
    arms.update({f"native {isa}": native(isa) for isa in kernels.bf16_gemm_isas()})
    return arms


def timings(product, shape: tuple[int, int, int], repeats: int) -> tuple[float, float]:
    """(forward, forward + backward) ms of ``product`` on random operands of ``shape``."""
    import mlx.core as mx

    rows, d_in, d_out = shape
    x, w = mx.random.normal((rows, d_in), key=mx.random.key(0)), mx.random.normal((d_out, d_in), key=mx.random.key(1))
    cot = mx.random.normal((rows, d_out), key=mx.random.key(2)).astype(product(x, w).dtype)
    mx.eval(x, w, cot)
    forward = best_ms(lambda: product(x, w), repeats)
    backward = best_ms(lambda: mx.vjp(product, [x, w], [cot])[1], repeats)
    return forward, backward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    import vantage_core  # noqa: F401  (the optimized BLAS before mlx)

    from vantage_core import kernels

    print(cpu_line())
    print(f"{'product':>22} {'arm':>18} {'fwd ms':>8} {'ratio':>6} {'fwd+bwd ms':>11} {'ratio':>6}")
    arms = arm_products()
    try:
        for label, shape in SHAPES.items():
            base = None
            for name, product in arms.items():
                forward, backward = timings(product, shape, a.repeats)
                base = base or (forward, backward)
                print(f"{label:>22} {name:>18} {forward:8.2f} {forward / base[0]:6.2f} {backward:11.2f} "
                      f"{backward / base[1]:6.2f}")
    finally:
        if kernels.bf16_gemm_isas():
            kernels._native.set_bf16_gemm_isa("")


if __name__ == "__main__":
    main()
