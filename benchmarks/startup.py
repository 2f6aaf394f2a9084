"""Wall time of `vantage plugins` (start-up plus plugin discovery), best and median of N runs.

    python benchmarks/startup.py [--runs 10]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    exe = shutil.which("vantage")
    cmd = [exe, "plugins"] if exe else [sys.executable, "-m", "vantage_core.cli", "plugins"]
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    print(f"`{' '.join(cmd[-2:] if exe is None else ['vantage', 'plugins'])}` over {args.runs} runs: "
          f"best {min(times):.3f} s, median {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
