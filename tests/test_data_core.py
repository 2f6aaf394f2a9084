"""Synthetic generator, tokenizer, serialization, pipeline and batching."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from vantage_core.sql.schema import Column, ForeignKey, Schema, Table


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from vantage_plugins.datasets.synthetic import SyntheticDataset

    return SyntheticDataset(n_databases=8, examples_per_db=30, seed=3, out_dir=str(tmp_path_factory.mktemp("syn")))


@pytest.fixture(scope="module")
def data_cfg(synthetic, tmp_path_factory):
    from vantage_core.config import DataConfig

    src = {"name": "synthetic", "n_databases": 8, "examples_per_db": 30, "seed": 3, "out_dir": str(synthetic.dir)}
    return DataConfig(train=[src], validation=[src], cache_dir=str(tmp_path_factory.mktemp("cache")),
                      tokenizer={"name": "sentencepiece", "vocab_size": 600})


@pytest.fixture(scope="module")
def tokenizer(data_cfg, tmp_path_factory):
    from vantage_core.data.pipeline import train_tokenizer

    return train_tokenizer(data_cfg, tmp_path_factory.mktemp("tok"))


def test_synthetic_every_gold_query_executes_and_returns_rows(synthetic):
    for split in synthetic.splits:
        for ex in synthetic.load(split).examples:
            conn = sqlite3.connect(f"file:{ex.db_paths[0]}?mode=ro", uri=True)
            rows = conn.execute(ex.sql).fetchall()
            conn.close()
            assert rows, (ex.db_id, ex.sql)


def test_synthetic_splits_use_different_databases_and_are_deterministic(synthetic, tmp_path):
    from vantage_plugins.datasets.synthetic import SyntheticDataset

    dbs = {s: {e.db_id for e in synthetic.load(s).examples} for s in synthetic.splits}
    assert not dbs["train"] & dbs["validation"] and not dbs["train"] & dbs["test"] and not dbs["validation"] & dbs["test"]
    again = SyntheticDataset(n_databases=8, examples_per_db=30, seed=3, out_dir=str(tmp_path))
    a, b = synthetic.load("validation").examples, again.load("validation").examples
    assert [(e.question, e.sql) for e in a] == [(e.question, e.sql) for e in b]
    other = SyntheticDataset(n_databases=8, examples_per_db=30, seed=4, out_dir=str(tmp_path / "o")).load("train")
    assert [e.sql for e in other.examples] != [e.sql for e in synthetic.load("train").examples]


def test_synthetic_questions_name_the_schema_and_cover_the_templates(synthetic):
    examples = synthetic.load("train").examples
    templates = {e.extras["template"] for e in examples}
    for needed in ("select", "filter_gt", "agg", "group_count", "top_k", "join_eq", "in", "above_avg"):
        assert needed in templates
    for ex in examples:
        table_names = [t.name for t in ex.schema.tables]
        assert any(t in ex.question for t in table_names), ex.question
    held_out = {(t.name, tuple(c.name for c in t.columns)) for e in synthetic.load("test").examples for t in e.schema.tables}
    seen = {(t.name, tuple(c.name for c in t.columns)) for e in examples for t in e.schema.tables}
    assert held_out - seen, "held-out databases should carry schemas unseen in training"


def test_tokenizer_round_trip_markers_and_save_load(tokenizer, tmp_path):
    from vantage_core.data.tokenizer import SQL, SentencePieceTokenizer, load_tokenizer

    sql = "SELECT name FROM employees WHERE salary > 51500 AND city = 'Zürich'"
    ids = tokenizer.encode(sql)
    assert tokenizer.decode(ids) == sql
    assert len({tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.marker_id(SQL)}) == 4
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id]) == sql
    tokenizer.save(tmp_path)
    for loaded in (SentencePieceTokenizer.load(tmp_path), load_tokenizer(tmp_path)):
        assert loaded.encode(sql) == ids and loaded.vocab_size == tokenizer.vocab_size


def _schema() -> Schema:
    return Schema("shop", [
        Table("customers", [Column("id", "number"), Column("name"), Column("city")], primary_keys=["id"]),
        Table("orders", [Column("id", "number"), Column("customer_id", "number"), Column("amount", "number")],
              primary_keys=["id"]),
        Table("warehouses", [Column("id", "number"), Column("region"), Column("capacity", "number")],
              primary_keys=["id"]),
    ], [ForeignKey("orders", "customer_id", "customers", "id")])


def test_serialize_marks_keys_and_reads_cell_values(tmp_path):
    from vantage_core.data.serialize import serialize_schema

    db = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, city TEXT)")
    conn.executemany("INSERT INTO customers VALUES (?, ?, ?)", [(1, "Ann", "Oslo"), (2, "Bo", "Rome"), (3, "Cy", "Oslo")])
    conn.commit()
    conn.close()
    s = serialize_schema(_schema(), cell_values=2, db_path=str(db))
    assert s.text.startswith("customers: id (number, pk), name (text; Bo, Cy), city (text; Oslo, Rome)")
    assert "customer_id (number, fk customers.id)" in s.text and " | orders: " in s.text
    assert s.cut == []


def test_serialize_cuts_least_relevant_tables_and_reports_them():
    from vantage_core.data.serialize import approx_tokens, serialize_schema

    full = serialize_schema(_schema())
    s = serialize_schema(_schema(), "What is the total amount of orders of each customer name?",
                         max_tokens=full.n_tokens // 2)
    assert s.n_tokens <= full.n_tokens // 2 and approx_tokens(s.text) == s.n_tokens
    assert "warehouses" in s.cut and "warehouses" not in s.kept
    assert "orders" in s.kept and "amount" in s.kept["orders"]


def test_prepare_caches_and_batches_mask_only_sql(data_cfg, tokenizer):
    from vantage_core.data.batching import eval_batches, train_batches
    from vantage_core.data.targets import target_format
    from vantage_core.data.tokenizer import SQL

    cold = target_format(data_cfg).prepare("train", tokenizer, max_seq_len=512)
    warm = target_format(data_cfg).prepare("train", tokenizer, max_seq_len=512)
    assert not cold.from_cache and warm.from_cache and len(cold) == len(warm) > 100
    assert [t.tolist() for t in cold.tokens] == [t.tolist() for t in warm.tokens]
    batches = iter(train_batches(warm, batch_size=8, seed=1))
    b = next(batches)
    assert b["tokens"].shape == b["targets"].shape == b["loss_mask"].shape and b["tokens"].dtype == np.int32
    assert b["tokens"].shape[1] % 8 == 0 and len(b["encoder_texts"]) == 8
    for i in range(8):
        ex = warm.examples[b["rows"][i]]
        sql_pos = int(np.nonzero(b["tokens"][i] == tokenizer.marker_id(SQL))[0][0])
        masked = b["targets"][i][b["loss_mask"][i] > 0]
        assert b["loss_mask"][i][:sql_pos].sum() == 0 and masked[-1] == tokenizer.eos_id
        assert tokenizer.decode(masked) == ex.sql
        n = b["lengths"][i]
        assert (b["tokens"][i][n:] == tokenizer.pad_id).all() and b["padding_mask"][i][:n].all()
    # deterministic by seed, and data-parallel ranks see disjoint batches
    again = next(iter(train_batches(warm, batch_size=8, seed=1)))
    assert (again["tokens"] == b["tokens"]).all()
    r0 = train_batches(warm, 8, seed=1, rank=0, world_size=2).epoch_batches(0)
    r1 = train_batches(warm, 8, seed=1, rank=1, world_size=2).epoch_batches(0)
    assert len(r0) == len(r1) and not set(np.concatenate(r0)) & set(np.concatenate(r1))
    seen = [r for batch in eval_batches(warm, 16) for r in batch["rows"]]
    assert sorted(seen) == list(range(len(warm)))



def test_whole_epoch_buckets_pad_least_and_keep_every_row(data_cfg, tokenizer):
    from vantage_core.data.batching import train_batches
    from vantage_core.data.targets import target_format

    split = target_format(data_cfg).prepare("train", tokenizer, max_seq_len=512)
    lengths = split.lengths

    def padded(bucket_batches):
        batches = train_batches(split, 8, seed=3, bucket_batches=bucket_batches).epoch_batches(0)
        rows = np.concatenate(batches)
        assert len(set(rows)) == len(rows) == len(split) // 8 * 8  # each row once, full batches only
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in batches)

    # one batch's rows at a time is no bucketing; the whole epoch (0) sorts every row together
    assert padded(0) <= padded(4) < padded(1)

def test_mixture_follows_weights_and_records_sources(data_cfg, tokenizer, synthetic):
    from vantage_core.config import DataConfig
    from vantage_core.data.batching import train_batches
    from vantage_core.data.targets import target_format

    base = data_cfg.train[0].model_dump()
    mix = DataConfig(train=[{**base, "weight": 0.75}, {**base, "weight": 0.25, "split": "test", "limit": 20}],
                     cache_dir=data_cfg.cache_dir)
    p = target_format(mix).prepare("train", tokenizer)
    assert [s.loaded for s in p.sources] == [len(synthetic.load("train").examples), 20]
    it = train_batches(p, 10, seed=0)
    for _, _ in zip(range(len(p) // 10), it):
        pass
    drawn = [it.drawn[f"synthetic/{split}"] for split in ("train", "test")]
    assert sum(drawn) == (len(p) // 10) * 10 and abs(drawn[1] / sum(drawn) - 0.25) < 0.05
    order = p.source_index[np.concatenate(it.epoch_batches(0))]
    assert abs((order == 1).mean() - 0.25) < 0.05
    assert p.record()["sources"][1]["loaded"] == 20


def test_sentencepiece_learns_sql_keywords_as_pieces():
    """A keyword seen thousands of times is one piece, not one piece per letter."""
    from vantage_core.data.tokenizer import SentencePieceTokenizer
    from vantage_core.plugins import registry

    report = registry().build("dataset", "synthetic", n_databases=12, examples_per_db=20).load("train")
    corpus = [t for e in report.examples for t in (e.question, e.sql)]
    tok = SentencePieceTokenizer(vocab_size=600).train(corpus)
    sql = "SELECT name FROM t WHERE x = 1 ORDER BY y DESC"
    ids = tok.encode(sql)
    assert tok.decode(ids) == sql
    assert len(ids) <= 16, [tok._sp.id_to_piece(i) for i in ids]
