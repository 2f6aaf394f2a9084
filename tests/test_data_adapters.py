"""Each adapter on a tiny fixture in its official format; Spider also on ../shared/data."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fixtures.releases import write_bird, write_gretel, write_spider, write_wikisql
from vantage_core.errors import DataError


def _build(name, **params):
    from vantage_core.plugins import registry

    return registry().build("dataset", name, **params)


def _execute(ex):
    conn = sqlite3.connect(f"file:{ex.db_paths[0]}?mode=ro", uri=True)
    try:
        return conn.execute(ex.sql).fetchall()
    finally:
        conn.close()


def test_spider_splits_by_database_and_names_missing_ones(tmp_path):
    root = write_spider(tmp_path / "spider", n_dbs=10, per_db=3)
    ds = _build("spider", path=str(root), holdout_fraction=0.2, seed=0)
    assert ds.splits == ("train", "validation", "dev")
    train, val = ds.load("train"), ds.load("validation")
    train_dbs, val_dbs = {e.db_id for e in train.examples}, {e.db_id for e in val.examples}
    assert not train_dbs & val_dbs and len(val_dbs) >= 1
    # every row is accounted for: loaded in one split, or skipped with its database named
    total = sum(len(r.examples) + sum(r.skipped.values()) for r in (train, val))
    assert total == 10 * 3 + 2
    skipped = train.skipped + val.skipped
    assert skipped == {"database gone_db missing": 2}
    assert any("gone_db" in d and "item 30" in d for d in train.details + val.details)
    assert "skipped: 2 database gone_db missing" in (train if train.skipped else val).summary("spider", "x")
    ex = train.examples[0]
    assert ex.schema.table("orders").primary_keys == ["id"] and ex.schema.foreign_keys[0].ref_table == "customers"
    assert _execute(ex) == [(2,)]
    dev = ds.load("dev")
    assert len(dev.examples) == 1 and _execute(dev.examples[0]) == [(37.5,)]
    assert _build("spider", path=str(root), holdout_fraction=0.2, seed=0).held_out_databases() == ds.held_out_databases()
    others = [_build("spider", path=str(root), holdout_fraction=0.2, seed=s).held_out_databases() for s in range(1, 6)]
    assert any(o != ds.held_out_databases() for o in others)  # the seed chooses the held-out databases


def test_spider_bad_input_names_file_line_database_and_column(tmp_path):
    root = write_spider(tmp_path / "spider", n_dbs=3, per_db=1, missing_db=None, dev=False)
    good = (root / "train_spider.json").read_text()
    (root / "train_spider.json").write_text(good[:40] + "\n  {oops" + good[40:])
    with pytest.raises(DataError, match=r"train_spider\.json:\d+:\d+: malformed JSON"):
        _build("spider", path=str(root)).load("train")
    (root / "train_spider.json").write_text(good)
    tables = json.loads((root / "tables.json").read_text())
    tables[0]["column_names_original"][3] = [0, "town"]  # the database has `city`, not `town`
    (root / "tables.json").write_text(json.dumps(tables))
    ds = _build("spider", path=str(root), holdout_fraction=0.34)
    reports = [ds.load(s) for s in ("train", "validation")]
    details = [d for r in reports for d in r.details]
    assert any("shop_0" in d and "customers.town" in d for d in details), details
    assert sum(r.skipped["schema of shop_0 names columns its database lacks"] for r in reports) == 1
    tables[0]["foreign_keys"] = [[5, 99]]
    (root / "tables.json").write_text(json.dumps(tables))
    with pytest.raises(DataError, match="database 'shop_0': foreign_keys names column index 99"):
        _build("spider", path=str(root)).load("train")
    with pytest.raises(DataError, match="no tables.json"):
        _build("spider", path=str(tmp_path / "nowhere"))


def test_bird_puts_evidence_in_the_input(tmp_path):
    from vantage_core.data.serialize import build_prompt

    ds = _build("bird", path=str(write_bird(tmp_path / "bird")))
    assert set(ds.splits) == {"dev", "validation"}
    report = ds.load("dev")
    assert len(report.examples) == 2 and not report.skipped
    ex = report.examples[0]
    assert ex.extras == {"evidence": "big refers to amount > 8", "difficulty": "simple"}
    assert _execute(ex) == [(2,)]
    _, prompt = build_prompt(ex)
    assert "big refers to amount > 8" in prompt and prompt.index("<ev>") < prompt.index("<sep>")
    assert "<ev>" not in build_prompt(report.examples[1])[1]


def test_wikisql_logical_form_becomes_sql_over_its_db(tmp_path):
    from vantage_core.data.serialize import serialize_schema

    ds = _build("wikisql", path=str(write_wikisql(tmp_path / "wikisql")))
    report = ds.load("validation")
    assert [e.sql for e in report.examples] == [
        "SELECT col4 FROM table_1_1000181_1 WHERE col0 = 'new south wales'",
        "SELECT COUNT(col2) FROM table_1_1000181_1 WHERE col5 > 1990",
        "SELECT col3 FROM table_1_1000181_1",
    ]
    assert [_execute(e) for e in report.examples] == [[("old",)], [(2,)], [("act",), ("nsw",)]]
    text = serialize_schema(report.examples[0].schema).text
    assert 'col0 "State/territory" (text)' in text and 'col5 "Year" (number)' in text
    raw = ds.raw("dev")  # a datasets.Dataset; numbers and strings mixed in values read as strings
    assert raw[1]["sql"]["conds"] == [{"column": 5, "operator": 1, "value": "1990"}]


def test_wikisql_malformed_line_is_named_and_counted(tmp_path):
    ds = _build("wikisql", path=str(write_wikisql(tmp_path / "w", bad_line=True)))
    report = ds.load("dev")
    assert len(report.examples) == 2 and report.skipped == {"malformed JSON line": 1}
    assert report.details[0].startswith(str(tmp_path / "w" / "dev.jsonl") + ":2: malformed JSON line")
    assert "2 loaded of 3, skipped: 1 malformed JSON line" in report.summary("wikisql", "dev")


def test_gretel_materializes_contexts_and_reports_failures(tmp_path):
    ds = _build("gretel", path=str(write_gretel(tmp_path / "g")), out_dir=str(tmp_path / "dbs"))
    report = ds.load("train")
    assert [e.extras["domain"] for e in report.examples] == ["maritime", "maritime"]
    assert report.examples[0].db_paths == report.examples[1].db_paths  # one database per distinct context
    assert [_execute(e) for e in report.examples] == [[(17000,)], [("Borealis",)]]
    assert report.skipped == {"sql_context failed to build in SQLite": 1, "gold SQL fails on its context": 1}
    assert any("id 3" in d for d in report.details) and any("id 4" in d for d in report.details)
    assert report.examples[0].schema.table("vessels").columns[2].type == "number"


def test_gretel_reads_the_hub_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_gretel(tmp_path / "g")
    rows = [json.loads(line) for line in (root / "train.jsonl").read_text().splitlines()]
    (root / "train.jsonl").unlink()
    pq.write_table(pa.Table.from_pylist(rows), root / "synthetic_text_to_sql_train.snappy.parquet")
    report = _build("gretel", path=str(root), out_dir=str(tmp_path / "dbs")).load("train")
    assert len(report.examples) == 2 and sum(report.skipped.values()) == 2


def test_download_fails_offline_with_a_way_forward(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from vantage_core.cli import cli

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(cli, ["data", "download", "spider", "--out", str(tmp_path)])
    assert isinstance(result.exception, DataError) and "no network" in str(result.exception)
    assert "path:" in str(result.exception)


@pytest.mark.data
def test_spider_real_release_loads_all_7000(shared_data):
    ds = _build("spider", path=str(shared_data / "spider"), holdout_fraction=0.15, seed=0)
    train, val = ds.load("train"), ds.load("validation")
    skipped = train.skipped + val.skipped
    assert len(train.examples) + len(val.examples) + sum(skipped.values()) == 7000
    assert sum(skipped.values()) == 96
    assert set(skipped) <= {"database baseball_1 missing", "database soccer_1 missing"}
    train_dbs, val_dbs = {e.db_id for e in train.examples}, {e.db_id for e in val.examples}
    assert not train_dbs & val_dbs
    assert 0.10 < len(val_dbs) / len(train_dbs | val_dbs) < 0.20
    for ex in train.examples[:50] + val.examples[:50]:
        _execute(ex)  # gold runs on its database
