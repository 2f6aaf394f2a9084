"""The runner: outputs, parallel == serial, the registry names, the CLI's prediction reader,
and (with ../shared/data) agreement with the official verdicts on a sample."""

import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from vantage_core.data.example import Example
from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.errors import DataError
from vantage_core.evaluate.runner import evaluate_predictions, resolve_metrics, score_pairs

SCHEMA = Schema("pets", [Table("pet", [Column("id", "number"), Column("kind"), Column("age", "number")])])
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = tmp_path_factory.mktemp("pets") / "pets.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE pet (id INTEGER PRIMARY KEY, kind TEXT, age INT)")
    conn.executemany("INSERT INTO pet VALUES (?,?,?)", [(i, ["cat", "dog"][i % 2], i) for i in range(20)])
    conn.commit()
    conn.close()
    golds = ["SELECT count(*) FROM pet", "SELECT kind, count(*) FROM pet GROUP BY kind",
             "SELECT id FROM pet WHERE age > 10 ORDER BY age DESC LIMIT 3", "SELECT max(age) FROM pet WHERE kind = 'cat'"]
    preds = ["SELECT count(*) FROM pet", "SELECT kind FROM pet GROUP BY kind",
             "SELECT id FROM pet WHERE age > 10 ORDER BY age DESC LIMIT 3", "DROP TABLE pet"]
    examples = [Example(f"q{i}", g, "pets", SCHEMA, [str(path)], "spider") for i, g in enumerate(golds * 3)]
    return examples, preds * 3


def test_registry_names():
    metrics = resolve_metrics(["exact_match", "execution", "bird_ex", "bird_ves", "wikisql_lf", "wikisql_ex",
                               "valid_sql"])
    assert [m.name for m in metrics] == ["exact_match", "execution", "bird_ex", "bird_ves", "wikisql_lf",
                                         "wikisql_ex", "valid_sql"]


def test_evaluate_predictions_writes_outputs(pairs, tmp_path):
    examples, preds = pairs
    result = evaluate_predictions(examples, preds, ["exact_match", "execution", "valid_sql"], tmp_path, workers=1)
    summary = result["summary"]
    assert summary["exact_match"]["exact_match"] == pytest.approx(0.5)
    assert summary["execution"]["execution"] == pytest.approx(0.5)
    assert summary["valid_sql"]["valid_sql"] == pytest.approx(0.75)  # DROP parses but is refused
    assert (tmp_path / "pred.sql").read_text().splitlines()[3] == "DROP TABLE pet"
    assert (tmp_path / "gold.sql").read_text().splitlines()[0] == "SELECT count(*) FROM pet\tpets"
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and rows[1]["scores"]["exact_match"]["exact"] == 0
    md = (tmp_path / "summary.md").read_text()
    assert "By hardness" in md and "| exact_match | 50.00% |" in md
    assert (tmp_path / "summary.png").stat().st_size > 1000


def test_two_workers_give_the_same_results(pairs):
    examples, preds = pairs
    metrics = resolve_metrics(["exact_match", "execution"])
    serial = score_pairs(examples, preds, metrics, workers=1)
    parallel = score_pairs(examples, preds, metrics, workers=2, chunk_size=2)
    assert serial == parallel
    for m in metrics:
        m.close() if hasattr(m, "close") else None


def test_read_predictions_formats(tmp_path):
    from vantage_core.cli.evaluate import read_predictions

    (tmp_path / "p.sql").write_text("SELECT 1\nSELECT 2\n")
    assert read_predictions(tmp_path / "p.sql") == ["SELECT 1", "SELECT 2"]
    (tmp_path / "p.json").write_text(json.dumps({"1": "SELECT 2\t----- bird -----\tdb", "0": "SELECT 1\t----- bird -----\tdb"}))
    assert read_predictions(tmp_path / "p.json") == ["SELECT 1", "SELECT 2"]
    (tmp_path / "p.jsonl").write_text('{"prediction": "SELECT 1"}\n"SELECT 2"\n')
    assert read_predictions(tmp_path / "p.jsonl") == ["SELECT 1", "SELECT 2"]
    (tmp_path / "bad.jsonl").write_text('{"prediction": "SELECT 1"}\n{"answer": 1}\n')
    with pytest.raises(DataError, match="bad.jsonl:2"):
        read_predictions(tmp_path / "bad.jsonl")


def _shared_data() -> Path:
    return Path(os.environ.get("VANTAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.mark.data
@pytest.mark.slow
def test_agreement_with_official_verdicts_on_a_sample():
    spider_dir = _shared_data() / "spider"
    if not (spider_dir / "verdicts").is_dir():
        pytest.skip(f"no Spider verdicts at {spider_dir / 'verdicts'} (set VANTAGE_SHARED_DATA)")
    sys.path.insert(0, str(REPO / "benchmarks"))
    from spider_agreement import load_pairs, load_schemas

    metrics = resolve_metrics(["exact_match", "execution"])
    schemas = load_schemas(spider_dir / "tables.json")
    for name in ("train_mutations.jsonl", "train_others.jsonl"):
        examples, preds, rows = load_pairs(spider_dir, name, schemas)
        step = max(1, len(rows) // 150)  # every k-th row: all kinds of mutation
        examples, preds, rows = examples[::step], preds[::step], rows[::step]
        scores = score_pairs(examples, preds, metrics)
        em = sum(s["exact_match"]["exact"] == r["exact"] for s, r in zip(scores, rows)) / len(rows)
        ex = sum(s["execution"]["exec"] == r["exec"] for s, r in zip(scores, rows)) / len(rows)
        hd = sum(s["exact_match"]["hardness"] == r["hardness"] for s, r in zip(scores, rows)) / len(rows)
        assert em >= 0.99 and ex >= 0.995 and hd >= 0.99, (name, em, ex, hd)
    metrics[1].close()


def test_training_scores_apply_the_configured_limits(tmp_path):
    """train.evaluation.score passes evaluate.timeout_s to the executing metrics: a query that
    counts to 300,000 (about 0.1 s in SQLite) is right under the default 5 s limit, one that
    counts to 3 million (about a second) is stopped under a 0.05 s one. A busy machine only makes
    the second slower; the first keeps a 50x margin."""
    import sqlite3

    from vantage_core.config import PluginSpec
    from vantage_core.data.example import Example
    from vantage_core.sql.sqlite_file import schema_from_sqlite
    from vantage_core.train.evaluation import score

    db = tmp_path / "n.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE n (x INTEGER)")
    con.commit()
    con.close()
    def counting_to(n: int) -> tuple[Example, str]:
        example = Example(question=f"count to {n}", sql=f"SELECT {n}", db_id="n", schema=schema_from_sqlite(db),
                          db_paths=[str(db)])
        return example, f"WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < {n}) SELECT count(*) FROM c"

    quick, slow = counting_to(300_000), counting_to(3_000_000)
    assert score([quick[0]], [quick[1]], [PluginSpec(name="execution")], out_dir=None)["execution"] == 1.0
    assert score([slow[0]], [slow[1]], [PluginSpec(name="execution")], out_dir=None, timeout_s=0.05)["execution"] == 0.0
