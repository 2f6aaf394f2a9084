"""Gold queries of the held-out Spider databases on DuckDB and PostgreSQL against SQLite.

Loads each database of the ``spider`` adapter's ``validation`` split (``holdout_fraction`` 0.15,
seed 0: 21 databases) into DuckDB files and PostgreSQL databases with ``vantage data
load-into``'s loader, runs every gold query on SQLite and, transpiled by the connector, on each
engine, and counts how many return the same rows (Spider's own comparison: the same multiset of
rows, the same sequence where the query orders). Every disagreement is listed with its cause.

    python benchmarks/dialects.py --postgres 'postgresql://user@/postgres?host=/tmp/pg' [--out runs/dialects]

Without ``--postgres`` (or ``$VANTAGE_TEST_POSTGRES_URL``) only DuckDB is measured. Writes
``dialects.md`` and ``dialects.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = 0.98


def without_limit(sql: str) -> str | None:
    """``sql`` without its outermost LIMIT (None when it has none)."""
    import sqlglot

    tree = sqlglot.parse_one(sql, read="sqlite")
    if tree.args.get("limit") is None:
        return None
    tree.set("limit", None)
    return tree.sql(dialect="sqlite")


def ties_only(sql: str, db, sqlite_path: str) -> bool:
    """Whether SQLite and the engine agree once the LIMIT is gone: then they only broke a tie of
    the ORDER BY differently, and both answers are right."""
    from vantage_core.evaluate import spider
    from vantage_core.sql.sandbox import execute

    whole = without_limit(sql)
    if whole is None:
        return False
    a, b = execute(sqlite_path, whole), db.execute(whole)
    return a.ok and b.ok and spider.results_equal(a.rows, b.rows, False)


def bare_rewritten(sql: str, transpiled: str) -> bool:
    """Whether the connector wrapped a bare column of ``sql`` (see Database._bare_columns)."""
    marks = ("MIN(", "ANY_VALUE(", "ARG_MAX(", "ARG_MIN(", "ARRAY_AGG(")
    return any(m in transpiled.upper() and m not in sql.upper() for m in marks)


def cause(error: str | None, gold_rows: list, rows: list) -> str:
    """A disagreement's likely cause, from the engine's error or how the rows differ."""
    if error:
        e = error.lower()
        for needle, name in (("group by", "bare column beside an aggregate (GROUP BY)"),
                             ("operator does not exist", "type coercion (text vs number)"),
                             ("could not convert", "type coercion (text vs number)"),
                             ("conversion error", "type coercion (text vs number)"),
                             ("cannot compare", "type coercion (text vs number)"),
                             ("timed out", "time limit"), ("does not exist", "missing function or name"),
                             ("parse", "transpilation (sqlglot)")):
            if needle in e:
                return name
        return "other error: " + error[:80]
    if len(gold_rows) != len(rows):
        return "different row count"
    norm = lambda rs: sorted(tuple(str(v).lower() for v in r) for r in rs)
    if norm(gold_rows) == norm(rows):
        return "case or value spelling"
    def approx(a, b):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)))
        except (TypeError, ValueError):
            return a == b
    if all(all(approx(a, b) for a, b in zip(g, p)) for g, p in zip(sorted(map(tuple, gold_rows), key=str),
                                                                 sorted(map(tuple, rows), key=str))):
        return "float precision"
    return "different rows (integer division, ordering of ties, ...)"


def introspection_seconds(server: str, n_tables: int = 500) -> float:
    """Seconds to introspect a PostgreSQL schema of ``n_tables`` tables (6 columns each, a primary
    key, a foreign key to the previous table), from a fresh connector."""
    import urllib.parse

    import psycopg

    from vantage_core.sql.database import Database, open_database

    url = urllib.parse.urlunsplit(urllib.parse.urlsplit(server)._replace(path="/vantage_wide"))
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute("DROP DATABASE IF EXISTS vantage_wide WITH (FORCE)")
        admin.execute("CREATE DATABASE vantage_wide")
    with psycopg.connect(url) as conn:
        for i in range(n_tables):
            ref = f", parent bigint REFERENCES t{i - 1}(id)" if i else ", parent bigint"
            conn.execute(f"CREATE TABLE t{i} (id bigint PRIMARY KEY, name text, amount double precision, "
                         f"day date, flag boolean{ref})")
    db: Database = open_database(url)
    t0 = time.perf_counter()
    schema = db.schema()
    seconds = time.perf_counter() - t0
    assert len(schema.tables) == n_tables and len(schema.foreign_keys) == n_tables - 1
    db.close()
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--postgres", default=os.environ.get("VANTAGE_TEST_POSTGRES_URL"),
                    help="A PostgreSQL server URL; each database is created beside its database.")
    ap.add_argument("--out", default=str(REPO / "runs" / "dialects"))
    ap.add_argument("--limit", type=int, default=None, help="Only the first N questions (a quick look).")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from vantage_core.data.load_into import load_into
    from vantage_core.sql.database import allow_privileged, open_database
    from vantage_core.evaluate import spider
    from vantage_core.sql.sandbox import execute
    from vantage_core.plugins import registry

    # --postgres is an administrator's URL (it creates the databases); the queries are gold SQL, and
    # what is measured is agreement between engines, so they run as that role (--allow-privileged)
    allow_privileged()
    report = registry().build("dataset", "spider", holdout_fraction=0.15, seed=0).load("validation")
    examples = report.examples[: args.limit] if args.limit else report.examples
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dbs = sorted({ex.db_id: ex.db_paths[0] for ex in examples}.items())
    engines: dict[str, dict[str, str]] = {"duckdb": {}}
    if args.postgres:
        engines["postgresql"] = {}
    loads = {}
    t0 = time.perf_counter()
    for db_id, path in dbs:
        engines["duckdb"][db_id] = f"duckdb:///{(out / 'duckdb' / f'{db_id}.duckdb').resolve()}"
        if args.postgres:  # the server's URL with this database's name as its path
            import urllib.parse

            engines["postgresql"][db_id] = urllib.parse.urlunsplit(
                urllib.parse.urlsplit(args.postgres)._replace(path="/" + db_id))
        for name in engines:
            loads[(name, db_id)] = load_into(engines[name][db_id], path, replace=True).line()
    load_s = time.perf_counter() - t0
    results = {name: {"same": 0, "n": 0, "failures": []} for name in engines}
    t1 = time.perf_counter()
    for ex in examples:
        gold_sql, _, order = spider.execution_queries(ex.sql, ex.sql, "compat")
        ref = execute(ex.db_paths[0], gold_sql)
        if not ref.ok:
            continue  # a gold that fails on SQLite says nothing about another engine
        for name, urls in engines.items():
            res = open_database(urls[ex.db_id]).execute(gold_sql)
            r = results[name]
            r["n"] += 1
            if res.ok and spider.results_equal(ref.rows, res.rows, order):
                r["same"] += 1
            else:
                why = "ordering of ties before LIMIT (the same rows without it)" \
                    if res.ok and ties_only(gold_sql, open_database(urls[ex.db_id]), ex.db_paths[0]) \
                    else cause(res.error, ref.rows, res.rows)
                if res.ok and why.startswith("different rows") and bare_rewritten(gold_sql, res.transpiled):
                    why = "bare column beside an aggregate (SQLite picks its row by its own rules)"
                r["ties"] = r.get("ties", 0) + why.startswith("ordering of ties")
                r["failures"].append({"db_id": ex.db_id, "sql": gold_sql, "transpiled": res.transpiled,
                                      "cause": why, "error": res.error,
                                      "sqlite_rows": [list(map(str, x)) for x in ref.rows[:3]],
                                      "rows": [list(map(str, x)) for x in res.rows[:3]]})
    run_s = time.perf_counter() - t1
    lines = [f"# Spider gold queries on other engines ({len(dbs)} held-out databases, {len(examples)} questions)", "",
             f"`python benchmarks/dialects.py{' --postgres URL' if args.postgres else ''}`: loading took {load_s:.1f} s, "
             f"running {run_s:.1f} s.", "",
             "| engine | same rows as SQLite | rate | target (>= 98%) | counting tie-breaks as agreeing |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        rate = r["same"] / r["n"] if r["n"] else 0.0
        loose = (r["same"] + r.get("ties", 0)) / r["n"] if r["n"] else 0.0
        r["rate"], r["rate_with_ties"] = rate, loose
        lines.append(f"| {name} | {r['same']} / {r['n']} | {100 * rate:.2f}% | {'met' if rate >= TARGET else 'missed'} "
                     f"| {100 * loose:.2f}% |")
    for name, r in results.items():
        lines += ["", f"## {name}: disagreements by cause", ""]
        for c, k in Counter(f["cause"] for f in r["failures"]).most_common():
            lines.append(f"- {c}: {k}")
        lines += ["", "| db | gold (SQLite) | as run | cause |", "|---|---|---|---|"]
        for f in r["failures"]:
            lines.append(f"| {f['db_id']} | `{f['sql']}` | `{f['transpiled']}` | {f['cause']}"
                         + (f": {f['error'][:100]}" if f["error"] else f"; SQLite {f['sqlite_rows']} vs {f['rows']}") + " |")
    if args.postgres:
        wide = introspection_seconds(args.postgres)
        lines += ["", f"Introspecting a 500-table PostgreSQL schema (6 columns, a primary and a foreign key each): "
                      f"{wide:.2f} s (target: under 5 s)."]
        print(f"introspecting 500 PostgreSQL tables: {wide:.2f} s")
    lines += ["", "## loads", ""] + [f"- {n} {d}: {line}" for (n, d), line in sorted(loads.items())]
    (out / "dialects.md").write_text("\n".join(lines) + "\n")
    (out / "dialects.json").write_text(json.dumps({n: r for n, r in results.items()}, indent=1, default=str))
    for name, r in results.items():
        print(f"{name}: {r['same']}/{r['n']} = {100 * r['rate']:.2f}% the same rows as SQLite "
              f"({100 * r['rate_with_ties']:.2f}% counting {r.get('ties', 0)} tie-breaks before a LIMIT as agreeing)")
    print(f"report in {out / 'dialects.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
