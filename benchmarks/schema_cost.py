"""What one question on a huge schema costs the server: wall time and the process's peak memory.

    python benchmarks/schema_cost.py [--checkpoint MODEL_DIR] [--max-schema-items 1000] [--cases db2000,ddl32k,limit]
    python benchmarks/schema_cost.py --max-schema-items 1000000     # no limit: what every case costs

Each case runs in a fresh process, so its peak resident memory is its own: the process builds
the app (``create_app`` with ``ServeSettings(max_schema_items=N)``), sends one ``POST
/v1/generate`` through FastAPI's TestClient (no execution-guided choice, nothing run) and
prints its status, seconds and peak resident memory (the process's, model and libraries
included; ``base`` is the same process answering a 2-table schema). The cases:

- ``db2000``: a served database of 2,000 tables of 4 columns (10,000 tables and columns);
- ``ddl32k``: ``schema_sql`` of 416 such tables (31.9 KB, 2,080 tables and columns);
- ``limit``: ``schema_sql`` of as many such tables as fit within the limit;
- ``base``: ``schema_sql`` of 2 such tables.

Without ``--checkpoint`` the model is an untrained one of ``configs/quickstart.yaml``'s sizes
(the pointer model family the quickstart trains): what a question costs depends on the
architecture and the schema, not on the weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TABLE = "CREATE TABLE {} (id INTEGER PRIMARY KEY, name TEXT, age INT, city TEXT);\n"
QUESTION = "how many people in city 5 are older than 30?"


def quickstart_model(folder: Path) -> Path:
    """An untrained model of configs/quickstart.yaml's sizes, laid out as a checkpoint."""
    import vantage_core  # noqa: F401  (BLAS before mlx)
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from vantage_core.config import dump_config, load_config
    from vantage_core.model import build_model
    from vantage_core.plugins import registry

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "quickstart.yaml", registry=False)
    words = ["select", "from", "where", "count", "(", ")", "*", "=", ">", "<", ",", "and", "join", "on"]
    vocab = registry().build("tokenizer", "sql_actions").train(words, folder / "tokenizer")
    model = build_model(cfg.model, vocab)
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


def write_databases(folder: Path) -> None:
    con = sqlite3.connect(folder / "db2000.sqlite")
    con.executescript("BEGIN;" + "".join(TABLE.format(f"t{i}") for i in range(2000)) + "COMMIT;")
    con.close()


def ddl(tables: int) -> str:
    return "".join(TABLE.format(f"tab{i}") for i in range(tables))


def request_body(case: str, max_items: int) -> dict:
    body = {"question": QUESTION, "execution_guided": False}
    if case == "db2000":
        return {**body, "db_id": "db2000"}
    tables = {"ddl32k": 416, "base": 2, "limit": max_items // 5}[case]
    return {**body, "schema_sql": ddl(tables)}


def measure(checkpoint: str, dbs: str, case: str, max_items: int) -> dict:
    """One request in this process: status, seconds, peak resident memory in MB."""
    from fastapi.testclient import TestClient

    from vantage_core.inference.serve import ServeSettings, create_app

    app = create_app(checkpoint, ServeSettings(db_dirs=[dbs], max_schema_items=max_items, max_body_bytes=1 << 20,
                                               timeout_s=3600))
    body = request_body(case, max_items)
    with TestClient(app) as client:
        t0 = time.perf_counter()
        r = client.post("/v1/generate", json=body)
        seconds = time.perf_counter() - t0
    detail = r.json().get("detail") if r.status_code >= 400 else None
    return {"case": case, "status": r.status_code, "seconds": round(seconds, 2),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "schema_bytes": len(body.get("schema_sql", "")), "detail": detail}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a run, checkpoint or export folder (default: an untrained quickstart-sized model)")
    ap.add_argument("--max-schema-items", type=int, default=1000)
    ap.add_argument("--cases", default="base,limit,ddl32k,db2000")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: "CHECKPOINT|DBS|CASE"
    args = ap.parse_args()
    if args.one:
        checkpoint, dbs, case = args.one.split("|")
        print(json.dumps(measure(checkpoint, dbs, case, args.max_schema_items)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = args.checkpoint or str(quickstart_model(root / "model"))
        (root / "dbs").mkdir()
        write_databases(root / "dbs")
        print(f"max_schema_items {args.max_schema_items}; model {args.checkpoint or 'untrained, quickstart sizes'}")
        for case in args.cases.split(","):
            out = subprocess.run([sys.executable, __file__, "--max-schema-items", str(args.max_schema_items),
                                  "--one", f"{checkpoint}|{root / 'dbs'}|{case}"], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"{case}: failed\n{out.stderr[-2000:]}")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{r['case']:7s} status {r['status']}  {r['seconds']:7.2f} s  peak {r['peak_mb']:6d} MB"
                  + (f"  ({r['detail'][:110]})" if r["detail"] else ""))


if __name__ == "__main__":
    main()
