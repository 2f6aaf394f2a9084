"""Server throughput and latency under a bounded load, from a second process over loopback.

    python benchmarks/serve_load.py --checkpoint MODEL_DIR [--clients 4] [--requests 40]

Starts ``vantage serve`` as a subprocess on a free loopback port with the checkpoint's test
databases, waits for ``/health``, then ``--clients`` threads of this process send
``--requests`` ``POST /v1/generate`` requests in all (the test split's questions, greedy unless
``--decoding``). Reports requests/s, p50/p95 latency and how many answers were 503 (the
server's admission limit, ``--max-concurrency``) or errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--max-concurrency", type=int, default=8)
    ap.add_argument("--decoding", default="greedy")
    ap.add_argument("--constraint", default="none")
    args = ap.parse_args()

    import httpx

    import vantage_core  # noqa: F401
    from vantage_core.config import load_config
    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.engine import resolve_model_dir

    cfg = load_config(resolve_model_dir(args.checkpoint) / "config.yaml", registry=False)
    examples = load_split(cfg.data, "test" if cfg.data.test else "validation").examples
    db_dirs = sorted({str(Path(ex.db_paths[0]).parent.parent) for ex in examples})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vantage_core.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
           "--max-concurrency", str(args.max_concurrency), "--timeout", "60"]
    for d in db_dirs:
        cmd += ["--db-dir", d]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        client = httpx.Client(base_url=base, timeout=120)
        deadline = time.time() + 120
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise SystemExit("the server did not start")
            time.sleep(0.3)
        known = set(client.get("/v1/databases").json())
        bodies = [{"question": ex.question, "db_id": ex.db_id, "decoding": args.decoding, "constraint": args.constraint}
                  for ex in examples if ex.db_id in known]
        client.post("/v1/generate", json=bodies[0])  # warm-up
        latencies, codes, lock = [], [], threading.Lock()
        next_i = iter(range(args.requests))

        def worker():
            c = httpx.Client(base_url=base, timeout=120)
            for i in next_i:
                t = time.perf_counter()
                r = c.post("/v1/generate", json=bodies[i % len(bodies)])
                with lock:
                    latencies.append(time.perf_counter() - t)
                    codes.append(r.status_code)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ok = [lat for lat, c in zip(latencies, codes) if c == 200]
        print(f"{args.requests} requests, {args.clients} concurrent clients, server admits {args.max_concurrency}, "
              f"decoding {args.decoding}, constraint {args.constraint}")
        print(f"  throughput: {len(ok) / wall:.2f} answered requests/s over {wall:.1f} s")
        print(f"  latency of answered requests: p50 {np.percentile(ok, 50) * 1000:.0f} ms, "
              f"p95 {np.percentile(ok, 95) * 1000:.0f} ms")
        print(f"  status codes: {dict(sorted((c, codes.count(c)) for c in set(codes)))}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
