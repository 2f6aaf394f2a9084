"""Forward+backward time of one MoE layer against a dense SwiGLU with the same active FLOPs and
against mlx-lm's SwitchGLU (when mlx-lm is installed).

    python benchmarks/moe_layer.py [--tokens 2048 --d 256 --hidden 512 --experts 8 --k 2 --repeat 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import vantage_core  # noqa: F401  (loads OpenBLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from vantage_core.model.moe import MoEBlock
from vantage_core.model.transformer import SwiGLU
from vantage_plugins.experts.banks import SwiGLUExperts
from vantage_plugins.routers.gates import TopKRouter


def time_fwd_bwd(module: nn.Module, x: mx.array, repeat: int, forward_only: bool = False) -> float:
    """Median seconds of one forward (+ backward to the parameters and the input)."""

    def objective(params, x):
        module.update(params)
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        return out.sum()

    step = mx.value_and_grad(objective, argnums=(0, 1))
    params = module.trainable_parameters()
    times = []
    for i in range(repeat + 2):
        start = time.perf_counter()
        if forward_only:
            mx.eval(objective(params, x))
        else:
            mx.eval(step(params, x))
        if i >= 2:  # two warm-up runs
            times.append(time.perf_counter() - start)
    return statistics.median(times)


class SwitchGLUBlock(nn.Module):
    """mlx-lm's SwitchGLU (gather_mm, sorted indices) behind the same router."""

    def __init__(self, d: int, hidden: int, experts: int, k: int):
        super().__init__()
        from mlx_lm.models.switch_layers import SwitchGLU

        self.router = TopKRouter(d, experts, k=k)
        self.switch = SwitchGLU(d, hidden, experts)

    def __call__(self, x):
        r = self.router(x)
        y = self.switch(x, r.indices)  # (N, k, d)
        return (y * r.weights[..., None]).sum(axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=10)
    a = ap.parse_args()
    mx.random.seed(0)
    x = mx.random.normal((a.tokens, a.d))
    rows = [("dense SwiGLU (hidden k*h, same active FLOPs)", SwiGLU(a.d, a.k * a.hidden)),
            ("vantage MoEBlock (topk + swiglu, sorted grouped GEMM)",
             MoEBlock(TopKRouter(a.d, a.experts, k=a.k), SwiGLUExperts(a.d, a.hidden, a.experts)))]
    try:
        rows.append(("mlx-lm SwitchGLU (gather_mm, sorted)", SwitchGLUBlock(a.d, a.hidden, a.experts, a.k)))
    except ImportError as exc:
        print(f"mlx-lm not importable ({exc}); skipping SwitchGLU")
    print(f"one MoE layer: {a.tokens} tokens, d={a.d}, expert hidden {a.hidden}, {a.experts} experts, "
          f"top-{a.k}, fp32, median of {a.repeat}")
    results = {}
    for name, module in rows:
        mx.eval(module.parameters())
        fwd = time_fwd_bwd(module, x, a.repeat, forward_only=True)
        both = time_fwd_bwd(module, x, a.repeat)
        results[name] = both
        print(f"  {name:55s} fwd {fwd * 1e3:7.1f} ms   fwd+bwd {both * 1e3:7.1f} ms")
    dense = results[rows[0][0]]
    ours = results[rows[1][0]]
    print(f"vantage / dense = {ours / dense:.2f}x (target <= 1.3x)")
    if len(rows) > 2:
        print(f"SwitchGLU / vantage = {results[rows[2][0]] / ours:.2f}x (target >= 1.6x); "
              f"SwitchGLU / dense = {results[rows[2][0]] / dense:.2f}x")


if __name__ == "__main__":
    main()
