"""What constrained decoding and execution-guided choice add, and what they cost.

For each setting (greedy / beam, with and without the ``sql_schema`` constraint, with and
without execution-guided choice) decodes the same examples and reports execution accuracy
(the ``execution`` metric plugin), the share of outputs that are valid SQL over the schema
(sqlglot + SQLite prepare, :func:`schema_violations`), and seconds per question.

    python benchmarks/constrained.py --checkpoint RUN_OR_MODEL_DIR [--limit 60] [--split test]

The examples come from the checkpoint's own config (``data.test``, else ``data.validation``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import vantage_core  # noqa: F401  (BLAS before mlx)

SETTINGS = [
    ("greedy", dict(decoding="greedy", constraint="none", execution_guided=False)),
    ("greedy + constraint", dict(decoding="greedy", constraint={"name": "sql_schema"}, execution_guided=False)),
    ("beam4", dict(decoding="beam", beam_size=4, constraint="none", execution_guided=False)),
    ("beam4 + exec-guided", dict(decoding="beam", beam_size=4, constraint="none", execution_guided=True)),
    ("beam4 + constraint", dict(decoding="beam", beam_size=4, constraint={"name": "sql_schema"}, execution_guided=False)),
    ("beam4 + constraint + exec-guided", dict(decoding="beam", beam_size=4, constraint={"name": "sql_schema"},
                                             execution_guided=True)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--split", choices=["test", "validation"], default="test")
    ap.add_argument("--only", nargs="*", help="Names of the settings to run (default: all).")
    ap.add_argument("--json", dest="json_out", help="Also write the table as JSON here.")
    args = ap.parse_args()

    from tqdm import tqdm

    from vantage_core.data.pipeline import load_split
    from vantage_core.inference.constraints import schema_violations
    from vantage_core.inference.engine import Engine
    from vantage_core.plugins import registry

    engine = Engine.load(args.checkpoint)
    cfg = engine.config
    slot = args.split if getattr(cfg.data, args.split) else "validation"
    examples = load_split(cfg.data, slot).examples[:args.limit]
    metric = registry().build("metric", "execution")
    rows = []
    for name, overrides in SETTINGS:
        if args.only and name not in args.only:
            continue
        opts = engine.options(**overrides)
        engine.generate(examples[0].question, db_path=examples[0].db_paths[0], schema=examples[0].schema,
                        options=opts)  # warm-up (compiles nothing, fills caches like a server would)
        ex_scores, valid, seconds = [], 0, []
        for ex in tqdm(examples, desc=name, leave=False):
            t = time.perf_counter()
            g = engine.generate(ex.question, db_path=ex.db_paths[0], schema=ex.schema, options=opts)
            seconds.append(time.perf_counter() - t)
            s = metric.score(ex, g.sql).get("exec")
            if s is not None:
                ex_scores.append(s)
            valid += not schema_violations(g.sql, ex.schema)
        rows.append({"setting": name, "n": len(examples), "execution": statistics.mean(ex_scores),
                     "valid_sql": valid / len(examples), "s_per_q_p50": statistics.median(seconds),
                     "s_per_q_mean": statistics.mean(seconds)})
        r = rows[-1]
        print(f"{name:36s} EX {r['execution']:.3f}  valid {r['valid_sql']:.3f}  "
              f"p50 {r['s_per_q_p50'] * 1000:7.1f} ms  mean {r['s_per_q_mean'] * 1000:7.1f} ms", flush=True)
    print(f"\n{len(examples)} examples of {slot} from {args.checkpoint}")
    print("| setting | EX | valid SQL | p50 s/q | mean s/q |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['setting']} | {r['execution']:.3f} | {r['valid_sql']:.3f} | {r['s_per_q_p50']:.3f} | {r['s_per_q_mean']:.3f} |")
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
