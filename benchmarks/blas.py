"""MLX fp32 matmul rate divided by numpy's, with and without Vantage's BLAS loading.

    python benchmarks/blas.py [--size 1024]

Each variant runs in a fresh subprocess, since the BLAS must be chosen before mlx.core loads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import vantage_core
from vantage_core import blas
from vantage_core.cli.doctor import sgemm_gflops
mlx_rate, np_rate = sgemm_gflops(int(sys.argv[1]), repeats=int(sys.argv[2]))
print(json.dumps({"mlx": mlx_rate, "numpy": np_rate, "blas": blas.active_blas()}))
"""


def measure(size: int, repeats: int, env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(size), str(repeats)], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(f"{args.size}x{args.size} fp32 matmul, {args.repeats} repeats")
    print(f"{'variant':<24}{'mlx GFLOP/s':>12}{'numpy GFLOP/s':>15}{'ratio':>8}  blas in use")
    for label, env in (("with Vantage's loading", {}), ("without (VANTAGE_BLAS=none)", {"VANTAGE_BLAS": "none"})):
        r = measure(args.size, args.repeats if env == {} else max(2, args.repeats // 5), env)
        print(f"{label:<24}{r['mlx']:>12.1f}{r['numpy']:>15.1f}{r['mlx'] / r['numpy']:>8.3f}  {r['blas']}")


if __name__ == "__main__":
    main()
