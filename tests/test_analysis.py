"""The expert-specialization atlas: SQL roles, the information measures, routing capture, CLI."""

from __future__ import annotations

import csv
import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401  (BLAS before mlx)
import mlx.core as mx

from vantage_core.model.moe import capture_routing
from vantage_core.analysis.atlas import (collect_routing, count_matrix, entropy,
                                         expert_specialization, moe_blocks, mutual_information,
                                         shuffled_baseline, summarize, write_atlas)
from vantage_core.data.sql_roles import ROLES, piece_roles, sql_token_roles
from vantage_core.data.example import Example
from vantage_core.data.targets import target_format
from vantage_core.sql.schema import Column, ForeignKey, Schema, Table

SCHEMA = Schema("music", [
    Table("singer", [Column("singer_id", "number"), Column("name"), Column("age", "number"), Column("year", "number")],
          primary_keys=["singer_id"]),
    Table("concert", [Column("concert_id", "number"), Column("singer_id", "number"), Column("year", "number")],
          primary_keys=["concert_id"]),
], [ForeignKey("concert", "singer_id", "singer", "singer_id")])

SQLS = [
    "SELECT name FROM singer WHERE age > 30",
    "SELECT count(*) FROM singer",
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id "
    "WHERE T2.year = 2014 GROUP BY T1.name HAVING count(*) > 1 ORDER BY T1.age DESC LIMIT 3",
    "SELECT name FROM singer UNION SELECT name FROM singer WHERE name = 'Ann'",
    "SELECT max(age), min(age) FROM singer WHERE year BETWEEN 2000 AND 2010",
]


def roles_of(sql: str, schema=SCHEMA) -> list[tuple[str, str]]:
    return [(r.text, r.role) for r in sql_token_roles(sql, schema)]


# ---------------------------------------------------------------------------- roles

def test_keywords_take_their_clause_and_names_their_kind():
    got = roles_of(SQLS[2])
    expected = [
        ("SELECT", "kw_select"), ("T1", "alias"), (".", "punctuation"), ("name", "column"),
        ("FROM", "kw_from"), ("singer", "table"), ("AS", "kw_from"), ("T1", "alias"),
        ("JOIN", "kw_from"), ("concert", "table"), ("AS", "kw_from"), ("T2", "alias"), ("ON", "kw_from"),
        ("T1", "alias"), (".", "punctuation"), ("singer_id", "column"), ("=", "operator"),
        ("T2", "alias"), (".", "punctuation"), ("singer_id", "column"),
        ("WHERE", "kw_where"), ("T2", "alias"), (".", "punctuation"), ("year", "column"), ("=", "operator"),
        ("2014", "value"), ("GROUP BY", "kw_group_by"), ("T1", "alias"), (".", "punctuation"), ("name", "column"),
        ("HAVING", "kw_having"), ("count", "function"), ("(", "punctuation"), ("*", "column"), (")", "punctuation"),
        (">", "operator"), ("1", "value"), ("ORDER BY", "kw_order_by"), ("T1", "alias"), (".", "punctuation"),
        ("age", "column"), ("DESC", "kw_order_by"), ("LIMIT", "kw_limit"), ("3", "value")]
    assert got == expected


def test_set_operators_subqueries_and_values():
    got = roles_of("SELECT name FROM singer UNION SELECT name FROM singer WHERE age NOT IN "
                   "(SELECT age FROM concert WHERE year > 2000) AND name = \"Bo\" AND age * 2 > 3")
    assert ("UNION", "kw_set_op") in got
    assert [r for t, r in got if t == "NOT"] == ["operator"]
    # after the sub-query's closing parenthesis the outer WHERE continues
    after = got[[t for t, _ in got].index(")") + 1:]
    assert after[0] == ("AND", "operator")
    assert ("Bo", "value") in got  # Spider's double-quoted strings are values, not names
    assert got[-4:] == [("*", "operator"), ("2", "value"), (">", "operator"), ("3", "value")]


def test_copied_marks_schema_names_only():
    roles = sql_token_roles("SELECT T1.name FROM singer AS T1 WHERE T1.age > 3", SCHEMA)
    copied = {r.text for r in roles if r.copied}
    assert copied == {"name", "singer", "age"}
    # without a schema nothing is known to be copied, but roles still come from context
    roles = sql_token_roles("SELECT name FROM singer", None)
    assert [r.role for r in roles] == ["kw_select", "column", "kw_from", "table"]
    assert not any(r.copied for r in roles)


def test_untokenizable_sql_gives_no_roles():
    assert sql_token_roles("SELECT 'unterminated", SCHEMA) == []


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vantage_core.data.tokenizer import SentencePieceTokenizer

    corpus = SQLS * 20 + ["how many singers are older than 30?", "singer: singer_id, name, age | concert: year"] * 20
    return SentencePieceTokenizer(vocab_size=320).train(corpus, tmp_path_factory.mktemp("tok"))


def test_pieces_cover_the_sql_and_take_the_role_under_them(tokenizer):
    sql = SQLS[2] + " AND name = 'Zoë'"  # a byte-fallback character too
    ids = tokenizer.encode(sql)
    pieces = piece_roles(tokenizer, sql, SCHEMA)
    assert [p.token_id for p in pieces] == ids
    assert all(p.role in ROLES for p in pieces)
    covered = "".join(sql[p.start:p.end] for p in pieces)
    assert covered == sql
    by_char = {}
    for r in sql_token_roles(sql, SCHEMA):
        for c in range(r.start, r.end):
            by_char[c] = r.role
    for p in pieces:
        text = sql[p.start:p.end]
        if text.strip():
            first = p.start + (len(text) - len(text.lstrip()))
            assert p.role == by_char[first], (p, text)
        else:
            assert p.role in ("space", by_char.get(p.start))  # a byte piece of a wider character
    assert "value" in {p.role for p in pieces if "ë" in sql[p.start:p.end] or p.piece.startswith("<0x")}


# ---------------------------------------------------------------------------- information measures

def test_perfect_specialization_gives_the_role_entropy():
    rng = np.random.default_rng(0)
    R = 5
    labels = rng.integers(0, R, 20_000)
    experts = labels[:, None]  # expert r receives exactly role r (top-1)
    counts = count_matrix(experts, labels, R, R)
    h = entropy(np.bincount(labels))
    assert abs(mutual_information(counts) - h) < 1e-9
    spec = expert_specialization(counts)
    share = counts.sum(axis=1) / counts.sum()
    assert abs((share * spec).sum() - mutual_information(counts)) < 1e-9  # MI = E_e[KL]
    mi_s, spec_s = shuffled_baseline(experts, labels, R, R, n_shuffles=3)
    assert mi_s < 0.01 and spec_s.max() < 0.02


def test_random_routing_gives_about_zero():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 8, 50_000)
    experts = np.stack([rng.permutation(6)[:2] for _ in range(len(labels))])  # top-2 of 6, random
    counts = count_matrix(experts, labels, 6, 8)
    assert counts.sum() == 2 * len(labels)
    mi = mutual_information(counts)
    mi_s, _ = shuffled_baseline(experts, labels, 6, 8)
    assert mi < 0.005
    assert abs(mi - mi_s) < 0.005


def test_partial_specialization_sits_between():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 4, 20_000)
    noisy = np.where(rng.random(len(labels)) < 0.5, labels, rng.integers(0, 4, len(labels)))
    mi = mutual_information(count_matrix(noisy[:, None], labels, 4, 4))
    assert 0.1 < mi < entropy(np.bincount(labels)) - 0.1


# ---------------------------------------------------------------------------- on a tiny model

TINY = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 256, "num_experts": 4,
              "expert_hidden": 32, "cross_attention_every": 0, "router": {"name": "topk", "k": 2},
              "schema_encoder": {"name": "none"}},
    "data": {"serialization": {"max_schema_tokens": 96, "max_question_tokens": 32},
             "test": [{"name": "synthetic", "n_databases": 3, "examples_per_db": 8}]},
    "inference": {"max_new_tokens": 40, "beam_size": 2},
}


def make_tiny_run(folder: Path, seed: int = 0, router: dict | None = None) -> Path:
    """A model folder as a checkpoint holds it (config.yaml, tokenizer/, model.safetensors),
    with random weights and a tokenizer trained on a little SQL."""
    from infer_fixture import write_untrained_model
    from vantage_core.config import load_config
    from vantage_core.data.tokenizer import SentencePieceTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    base = json.loads(json.dumps(TINY))
    if router:
        base["model"]["router"] = router
    cfg = load_config(None, base=base, registry=False)
    corpus = SQLS * 20 + ["how many singers are there?", "singer: singer_id (number, pk), name (text), age (number)"] * 20
    tok = SentencePieceTokenizer(vocab_size=320).train(corpus, folder / "tokenizer")
    return write_untrained_model(folder, cfg, tok, seed)


def make_music_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, age INTEGER, year INTEGER);
        CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER REFERENCES singer(singer_id),
                              year INTEGER);
        INSERT INTO singer VALUES (1, 'Ann', 31, 1990), (2, 'Bo', 25, 1999), (3, 'Cy', 40, 1980);
        INSERT INTO concert VALUES (1, 1, 2014), (2, 3, 2015);
    """)
    con.commit()
    con.close()
    return path


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("run") / "model")


def test_capture_routing_sees_every_moe_layer_and_restores_the_model(tiny_run):
    from vantage_core.model.io import load_model

    model, tok, cfg, _ = load_model(tiny_run)
    routers = [b.router for b in moe_blocks(model)]
    tokens = mx.array([tok.encode(SQLS[0])], dtype=mx.int32)
    before, _ = model(tokens)
    with capture_routing(model) as taps:
        during, _ = model(tokens)
        assert len(taps) == len(routers) == 2
        assert all(len(t.calls) == 1 and t.calls[0].indices.shape == (tokens.shape[1], 2) for t in taps)
    assert [b.router for b in moe_blocks(model)] == routers  # the original modules are back
    assert all("router" not in b.__dict__ for b in moe_blocks(model))
    # nested inside another tap (the inference engine keeps one): that one is put back
    with capture_routing(model) as outer:
        with capture_routing(model) as inner:
            model(tokens)
        assert [b.__dict__.get("router") for b in moe_blocks(model)] == outer
        assert all(len(t.calls) == 1 for t in inner + outer)
    assert all("router" not in b.__dict__ for b in moe_blocks(model))
    assert mx.allclose(before, during).item()
    from mlx.utils import tree_flatten

    assert any(".router." in name for name, _ in tree_flatten(model.parameters()))  # parameters untouched


def test_atlas_on_a_tiny_model(tiny_run, tmp_path):
    from vantage_core.model.io import load_model

    model, tok, cfg, _ = load_model(tiny_run)
    examples = [Example(question="how many singers?", sql=s, db_id="music", schema=SCHEMA, db_paths=[])
                for s in SQLS] * 3
    record = collect_routing(model, tok, examples, target_format(cfg.data), batch_size=4, progress=False)
    n_pieces = sum(len(tok.encode(s)) for s in SQLS) * 3
    assert record.roles.shape == (n_pieces,) and record.n_examples == 15
    assert [e.shape for e in record.experts] == [(n_pieces, 2)] * 2
    assert all(((e >= 0) & (e < 4)).all() for e in record.experts)
    atlas = summarize(record, name="tiny", n_shuffles=2)
    assert len(atlas.layers) == 2
    for la in atlas.layers:
        assert la.counts.sum() == 2 * n_pieces
        assert 0 <= la.mi <= atlas.role_entropy + 1e-9
        assert la.specialization.shape == (4,)
    files = write_atlas(atlas, tmp_path / "atlas")
    for key in ("counts", "experts", "layers", "summary", "heatmap_layer0", "heatmap_layer1", "specialization"):
        assert files[key].is_file() and files[key].stat().st_size > 0, key
    rows = list(csv.DictReader(open(files["layers"])))
    assert [int(r["layer"]) for r in rows] == [0, 1]
    assert float(rows[0]["mi_role_bits"]) == pytest.approx(atlas.layers[0].mi, abs=1e-4)
    assert len(list(csv.DictReader(open(files["counts"])))) == 2 * 4 * len(ROLES)


def test_routing_does_not_depend_on_batching(tiny_run):
    from vantage_core.model.io import load_model

    model, tok, cfg, _ = load_model(tiny_run)
    ex = [Example(question="how many singers?", sql=s, db_id="music", schema=SCHEMA, db_paths=[]) for s in SQLS]
    together = collect_routing(model, tok, ex, target_format(cfg.data), batch_size=8, progress=False)
    alone = [collect_routing(model, tok, [e], target_format(cfg.data), batch_size=1, progress=False) for e in ex]
    # collect_routing orders examples by length; match them by their piece sequences
    offset = 0
    order = sorted(range(len(ex)), key=lambda i: len(tok.encode(ex[i].sql)) + len(tok.encode(ex[i].question)))
    for i in order:
        n = len(alone[i].pieces)
        assert together.pieces[offset:offset + n] == alone[i].pieces
        for layer in range(2):
            assert np.array_equal(np.sort(together.experts[layer][offset:offset + n], axis=1),
                                  np.sort(alone[i].experts[layer], axis=1))
        offset += n


def test_cli_analyze_experts(tiny_run, tmp_path):
    from click.testing import CliRunner

    from vantage_core.cli import cli

    second = make_tiny_run(tmp_path / "aux_free" / "model", seed=1, router={"name": "aux_free", "k": 2})
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["analyze", "experts", str(tiny_run), str(second), "--dataset", "synthetic",
                                      "--split", "test", "--limit", "6", "--out", str(out), "--no-progress",
                                      "--shuffles", "2", "--untrained"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "I(expert; role)" in result.output
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 2
    for f in folders:
        summary = json.loads((out / f / "atlas.json").read_text())
        assert summary["examples"] == 6 and len(summary["layers"]) == 2
        assert all(0 <= layer["mi_role_untrained_bits"] for layer in summary["layers"])
    assert any(p.name.startswith("compare-synthetic-test") for p in out.iterdir())
    assert "aux_free" in json.loads((out / folders[0] / "atlas.json").read_text()).get("router", "") + \
        json.loads((out / folders[1] / "atlas.json").read_text()).get("router", "")


def test_cli_rejects_an_unknown_dataset(tiny_run):

    from vantage_core.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["analyze", "experts", str(tiny_run), "--dataset", "no_such_dataset", "--split", "test", "--no-progress"])
    assert exc.value.code == 2
