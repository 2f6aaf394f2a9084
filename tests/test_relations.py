"""Relation-aware attention of the ``linked`` schema encoder (``relations: true``): the relation
matrix built in collate from compact per-example features, and the encoder's forward/backward."""

from __future__ import annotations

import numpy as np
import pytest

import vantage_core  # noqa: F401
import mlx.core as mx
import mlx.nn as nn

from vantage_core.data.actions import REL, RELATIONS, collate, featurize, relation_matrix
from vantage_core.data.example import Example
from vantage_core.data.linking import column_values, schema_items
from vantage_plugins.linkers.lexical import LexicalLinker
from vantage_plugins.schema_encoders.linked import LinkedSchemaEncoder, RelationEncoder

from test_sql_actions import toy_db, toy_schema  # noqa: F401  (toy_db is a fixture)


class WordTokenizer:
    """Whitespace pieces with offsets and word ids, [CLS] and [SEP] around (a tokenizer's encode)."""

    def encode(self, text: str):
        spans, pos = [], 0
        for w in text.split():
            pos = text.index(w, pos)
            spans.append((pos, pos + len(w)))
            pos += len(w)
        n = len(spans)

        class Enc:
            ids = [101] + list(range(1000, 1000 + n)) + [102]
            offsets = [(0, 0)] + spans + [(0, 0)]
            word_ids = [None] + list(range(n)) + [None]
            attention_mask = [1] * (n + 2)
        return Enc


QUESTION = "Which singers from France had a concert , by singer id ?"


@pytest.fixture
def toy_feats(toy_db):  # noqa: F811
    schema = toy_schema()
    ex = Example(question=QUESTION, sql="", db_id="concerts", schema=schema, db_paths=[toy_db])
    return featurize(ex, WordTokenizer(), LexicalLinker(), column_values(toy_db, schema)), schema_items(schema)


def test_relation_matrix_of_a_toy_schema(toy_feats):
    f, items = toy_feats
    at = {(it.table, it.column): k for k, it in enumerate(items)}
    singer, concert = at[("singer", None)], at[("concert", None)]
    sid, name, country = at[("singer", "singer_id")], at[("singer", "name")], at[("singer", "country")]
    c_sid, year = at[("concert", "singer_id")], at[("concert", "year")]
    assert f["item_table"] == [it.table_index for it in items]
    assert f["fk_pairs"] == [[c_sid, sid]]  # concert.singer_id references singer.singer_id
    Q, N = len(f["q_ids"]) + 2, len(items) + 3  # padded beyond this example, as in a batch
    rel = relation_matrix([f], Q, N)[0]
    assert rel.shape == (Q + N, Q + N) and rel.dtype == np.int8
    name_of = {i: n for n, i in REL.items()}

    def r(a: int, b: int) -> str:  # items' positions follow the Q question positions
        return name_of[int(rel[Q + a, Q + b])]

    assert r(name, singer) == "col-table-own" and r(singer, name) == "table-col-own"
    assert r(sid, singer) == "col-table-pk" and r(singer, sid) == "table-col-pk"
    assert r(name, concert) == "col-table" and r(concert, name) == "table-col"
    assert r(c_sid, sid) == "col-fk" and r(sid, c_sid) == "col-fk-rev"  # symmetric the right way
    assert r(name, country) == r(country, name) == "col-same-table"
    assert r(name, year) == "col-col" and r(name, name) == "col-self"
    assert r(concert, singer) == "table-fk" and r(singer, concert) == "table-fk-rev"
    assert r(singer, singer) == "table-self"
    # question pieces: [CLS] Which singers from France ... (piece p = word p - 1)
    piece = {w: p + 1 for p, w in enumerate(QUESTION.split())}
    assert name_of[int(rel[piece["France"], Q + country])] == "q-col-value"
    assert name_of[int(rel[Q + country, piece["France"]])] == "col-q-value"
    assert name_of[int(rel[piece["singers"], Q + singer])] == "q-table-exact"
    assert name_of[int(rel[Q + singer, piece["singers"]])] == "table-q-exact"
    assert name_of[int(rel[piece["France"], Q + year])] == "q-col"
    assert name_of[int(rel[piece["Which"], Q + concert])] == "q-table"
    assert name_of[int(rel[1, 2])] == "qq+1" and name_of[int(rel[5, 1])] == "qq-2" and name_of[int(rel[3, 3])] == "qq0"


def test_collate_carries_the_relation_matrix(toy_feats):
    f, _ = toy_feats
    ex = Example(question=QUESTION, sql="", db_id="concerts", schema=toy_schema(), db_paths=[])
    b = collate([f, f], [ex, ex], vocab=None, with_targets=False)
    Q, N = b["q_mask"].shape[1], b["item_mask"].shape[1]
    assert b["relations"].shape == (2, Q + N, Q + N) and b["relations"].dtype == np.int8
    assert (b["relations"] == relation_matrix([f], Q, N)[0]).all()
    assert 0 < b["relations"].max() < len(RELATIONS)


def _inputs(B: int, Q: int, N: int, rel: np.ndarray) -> dict[str, mx.array]:
    rng = np.random.default_rng(0)
    qm, im = np.ones((B, Q), bool), np.ones((B, N), bool)
    qm[1, Q - 2:], im[1, N - 1:] = False, False  # the second example is shorter
    zeros = {k: mx.zeros((B, N), mx.int32) for k in ("item_type", "item_key", "item_link_name", "item_link_value")}
    zeros.update({k: mx.zeros((B, Q), mx.int32) for k in ("q_link_table", "q_link_column", "q_link_value")})
    return {"q_mask": mx.array(qm), "item_mask": mx.array(im), "relations": mx.array(rel),
            "q_states": mx.array(rng.normal(size=(B, Q, 384)).astype(np.float32)),
            "item_vec": mx.array(rng.normal(size=(B, N, 384)).astype(np.float32)),
            "item_table_vec": mx.array(rng.normal(size=(B, N, 384)).astype(np.float32)), **zeros}


def test_relation_aware_encoder_forward_backward(tmp_path):
    mx.random.seed(0)
    enc = LinkedSchemaEncoder(32, n_layers=2, n_heads=2, hidden=64, dropout=0.0, cache_dir=str(tmp_path),
                              relations=True)
    assert isinstance(enc.mixer, RelationEncoder)
    B, Q, N = 2, 5, 4
    rel = np.random.default_rng(1).integers(1, len(RELATIONS), size=(B, Q + N, Q + N)).astype(np.int8)
    inputs = _inputs(B, Q, N, rel)
    for layer in enc.mixer.layers:  # away from the zero start, so the relation terms act
        layer.attention.rel_key = mx.random.normal(layer.attention.rel_key.shape)
        layer.attention.rel_bias = mx.random.normal(layer.attention.rel_bias.shape)
    mem = enc.memory(inputs)
    assert mem.states.shape == (B, Q + N, 32) and mem.items.shape == (B, N, 32)
    # padded positions do not reach the real ones, whatever their relation ids
    other = rel.copy()
    other[1, Q - 2:Q, :] = other[1, :, Q - 2:Q] = 7
    other[1, -1, :] = other[1, :, -1] = 3
    mem2 = enc.memory({**inputs, "relations": mx.array(other)})
    real = np.concatenate([np.array(inputs["q_mask"])[1], np.array(inputs["item_mask"])[1]])
    assert np.allclose(np.array(mem.states)[1, real], np.array(mem2.states)[1, real], atol=1e-5)
    # the relations change the states, and gradients reach their parameters
    flat = rel.copy()
    flat[:] = 1
    assert not np.allclose(np.array(mem.states), np.array(enc.memory({**inputs, "relations": mx.array(flat)}).states))

    def loss(model):
        return (model.memory(inputs).states ** 2).mean()

    value, grads = nn.value_and_grad(enc, loss)(enc)
    g = grads["mixer"]["layers"][0]["attention"]
    assert np.isfinite(value.item())
    assert float(mx.abs(g["rel_key"]).sum()) > 0 and float(mx.abs(g["rel_bias"]).sum()) > 0
    assert g["rel_bias"].shape == (2, len(RELATIONS))


def test_relations_default_off_keeps_the_plain_mixer(tmp_path):
    enc = LinkedSchemaEncoder(32, n_layers=1, n_heads=2, hidden=64, cache_dir=str(tmp_path))
    assert isinstance(enc.mixer, nn.TransformerEncoder) and not enc.relations
    B, Q, N = 2, 5, 4
    inputs = _inputs(B, Q, N, np.zeros((B, Q + N, Q + N), np.int8))
    inputs.pop("relations")
    assert enc.memory(inputs).states.shape == (B, Q + N, 32)


def test_relation_aware_run_trains_generates_and_exports(tmp_path, monkeypatch):
    """A tiny pointer run with ``relations: true``: training, the engine's batched generation
    (the same collate path) and an export that reloads to the same answers."""
    from infer_fixture import make_db
    from test_pointer_model import QUESTIONS, TINY
    from vantage_core.config import load_config
    from vantage_core.inference.engine import Engine
    from vantage_core.inference.export import export_model
    from vantage_core.train.run import train

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    model = {**TINY["model"], "schema_encoder": {**TINY["model"]["schema_encoder"], "relations": True}}
    cfg = load_config(base={**TINY, "model": model, "run": {"name": "tiny_rel", "dir": str(tmp_path / "run")}})
    summary = train(cfg, overwrite=True, progress=False, echo=lambda *_: None)
    assert summary["steps"] == 4
    db = make_db(tmp_path / "concerts.sqlite")
    engine = Engine.load(tmp_path / "run")
    assert isinstance(engine.model.schema_encoder.mixer, RelationEncoder)
    answers = [engine.generate(q, db_path=db).sql for q in QUESTIONS]
    assert all(answers)
    export_model(tmp_path / "run", tmp_path / "export")
    again = Engine.load(tmp_path / "export")
    assert isinstance(again.model.schema_encoder.mixer, RelationEncoder)
    assert [again.generate(q, db_path=db).sql for q in QUESTIONS] == answers
