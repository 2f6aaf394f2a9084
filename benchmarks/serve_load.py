"""Server throughput and latency under a bounded, mixed load, from a second process over loopback.

    python benchmarks/serve_load.py --checkpoint MODEL_DIR [--clients 4,8] [--requests 40] [--run-share 0.5]
    python benchmarks/serve_load.py --checkpoint MODEL_DIR --db-dir DBS   # questions made from DBS's tables

Starts ``vantage serve`` as a subprocess on a free loopback port with the checkpoint's test
databases (or the ``--db-dir`` folders), waits for ``/health``, then for each number of clients
in ``--clients``, that many threads of this process send ``--requests`` ``POST /v1/generate``
requests in all (the test split's questions, or one question per table of each ``--db-dir``
database; greedy unless ``--decoding``). A ``--run-share`` of them ask ``run: true``, spread
evenly, over databases taken in turn, so concurrent requests run SQL on different databases.

Reports per number of clients: requests/s, p50/p95 latency, the status codes (503 is the
server's admission limit, ``--max-concurrency``), and whether every answer matches its own
request: a ``run: true`` answer's rows (or error) must be what its SQL gives on its own database
(run again here, read-only), and an answer without ``run`` must hold no rows.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--clients", default="4,8", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--requests", type=int, default=40, help="requests per number of clients")
    ap.add_argument("--run-share", type=float, default=0.5, help="share of requests with run: true")
    ap.add_argument("--max-concurrency", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=None)
    ap.add_argument("--decoding", default="greedy")
    ap.add_argument("--constraint", default="none")
    ap.add_argument("--db-dir", action="append", default=[], help="serve these databases instead of the test split's")
    return ap.parse_args()


def questions_from_databases(db_dirs: list[str]) -> tuple[list[tuple[str, str]], dict[str, Path]]:
    """(question, db_id) per table of every database in ``db_dirs``, and db_id -> file."""
    from vantage_core.inference.serve import find_databases

    databases = find_databases(db_dirs)
    asked = []
    for db_id, path in sorted(databases.items()):
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        finally:
            conn.close()
        asked += [(f"list {t} names", db_id) for t in tables] + [(f"how many {t} are there?", db_id) for t in tables]
    return asked, databases


def questions_from_checkpoint(checkpoint: str) -> tuple[list[tuple[str, str]], list[str], dict[str, Path]]:
    """(question, db_id) of the checkpoint's test (else validation) split, its database folders
    and db_id -> file."""
    from vantage_core.config import load_config
    from vantage_core.data.pipeline import load_split
    from vantage_core.model.io import resolve_model_dir

    cfg = load_config(resolve_model_dir(checkpoint) / "config.yaml", registry=False)
    examples = load_split(cfg.data, "test" if cfg.data.test else "validation").examples
    db_dirs = sorted({str(Path(ex.db_paths[0]).parent.parent) for ex in examples})
    paths = {ex.db_id: Path(ex.db_paths[0]) for ex in examples}
    return [(ex.question, ex.db_id) for ex in examples], db_dirs, paths


def interleave_by_database(asked: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The questions reordered so that consecutive ones are on different databases."""
    by_db: dict[str, list[tuple[str, str]]] = {}
    for q in asked:
        by_db.setdefault(q[1], []).append(q)
    queues, out = list(by_db.values()), []
    while any(queues):
        for queue in queues:
            if queue:
                out.append(queue.pop(0))
    return out


def start_server(args: argparse.Namespace, db_dirs: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vantage_core.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port),
           "--max-concurrency", str(args.max_concurrency), "--timeout", "60"]
    for d in db_dirs:
        cmd += ["--db-dir", d]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return server, f"http://127.0.0.1:{port}"


def wait_until_up(client, server: subprocess.Popen, limit_s: float = 120) -> None:
    import httpx

    deadline = time.time() + limit_s
    while True:
        try:
            if client.get("/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.time() > deadline or server.poll() is not None:
            raise SystemExit("the server did not start")
        time.sleep(0.3)


def wants_run(i: int, share: float) -> bool:
    """Whether request ``i`` asks ``run: true``: ``share`` of them, spread evenly."""
    return int((i + 1) * share) > int(i * share)


def mismatch(body: dict, answer: dict, db_file: Path | None) -> str | None:
    """Why ``answer`` is not the answer to ``body`` (None when it is)."""
    from vantage_core.sql.sandbox import execute_unisolated

    if not body.get("run"):
        return None if answer.get("rows") is None else "rows in an answer that did not ask to run"
    if db_file is None:
        return f"no local copy of {body['db_id']}"
    own = execute_unisolated(str(db_file), answer["sql"])
    want = [list(r) for r in own.rows] if own.ok else None
    if answer.get("rows") != want or (answer.get("error") is None) != own.ok:
        return f"{body['db_id']}: {answer['sql']!r} answered {answer.get('rows') or answer.get('error')!r}, " \
               f"its own database gives {want or own.error!r}"
    return None


def measure(base: str, bodies: list[dict], paths: dict[str, Path], clients: int, requests: int) -> dict:
    """Send ``requests`` requests from ``clients`` threads; latencies, codes and mismatches."""
    import httpx

    latencies, codes, wrong, ran, lock = [], [], [], [], threading.Lock()
    next_i = iter(range(requests))

    def worker():
        c = httpx.Client(base_url=base, timeout=120)
        for i in next_i:
            body = bodies[i % len(bodies)]
            t = time.perf_counter()
            r = c.post("/v1/generate", json=body)
            elapsed = time.perf_counter() - t
            answer = r.json() if r.status_code == 200 else None
            why = mismatch(body, answer, paths.get(body["db_id"])) if answer is not None else None
            with lock:
                latencies.append(elapsed)
                codes.append(r.status_code)
                if why:
                    wrong.append(why)
                if answer is not None and body.get("run"):
                    ran.append(answer.get("error") is None)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"wall": time.perf_counter() - t0, "latencies": latencies, "codes": codes, "wrong": wrong, "ran": ran}


def report(args: argparse.Namespace, clients: int, bodies: list[dict], m: dict) -> None:
    ok = [lat for lat, c in zip(m["latencies"], m["codes"]) if c == 200]
    runs = sum(1 for i in range(args.requests) if bodies[i % len(bodies)].get("run"))
    print(f"{args.requests} requests ({runs} with run: true), {clients} concurrent clients, server admits "
          f"{args.max_concurrency}, decoding {args.decoding}, constraint {args.constraint}")
    print(f"  throughput: {len(ok) / m['wall']:.2f} answered requests/s over {m['wall']:.1f} s")
    if ok:
        print(f"  latency of answered requests: p50 {np.percentile(ok, 50) * 1000:.0f} ms, "
              f"p95 {np.percentile(ok, 95) * 1000:.0f} ms")
    print(f"  status codes: {dict(sorted((c, m['codes'].count(c)) for c in set(m['codes'])))}")
    print(f"  answers matching their own request: {len(ok) - len(m['wrong'])}/{len(ok)} "
          f"(run: true answers with rows {sum(m['ran'])}, with an SQL error {len(m['ran']) - sum(m['ran'])})")
    for why in m["wrong"][:5]:
        print(f"    MISMATCH {why}")


def main() -> None:
    args = parse_args()
    import httpx

    import vantage_core  # noqa: F401

    if args.db_dir:
        asked, paths = questions_from_databases(args.db_dir)
        db_dirs = args.db_dir
    else:
        asked, db_dirs, paths = questions_from_checkpoint(args.checkpoint)
    server, base = start_server(args, db_dirs)
    try:
        client = httpx.Client(base_url=base, timeout=120)
        wait_until_up(client, server)
        known = set(client.get("/v1/databases").json())
        asked = interleave_by_database([q for q in asked if q[1] in known])
        if not asked:
            raise SystemExit("no question on a database the server knows")
        bodies = []
        for i, (question, db_id) in enumerate(asked):
            body = {"question": question, "db_id": db_id, "decoding": args.decoding, "constraint": args.constraint,
                    "run": wants_run(i, args.run_share)}
            if args.max_new_tokens:
                body["max_new_tokens"] = args.max_new_tokens
            bodies.append(body)
        client.post("/v1/generate", json=bodies[0])  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            report(args, clients, bodies, measure(base, bodies, paths, clients, args.requests))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(10)


if __name__ == "__main__":
    main()
