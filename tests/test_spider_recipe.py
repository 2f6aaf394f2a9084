"""The Spider recipe's pieces: schema linking on a toy schema, the SQL <-> action codec, the
pointer model's shapes and constrained beam search, the recipe config."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401

import mlx.core as mx

from vantage_core.data.example import Column, ForeignKey, Schema, Table
from vantage_core.data.linking import NAME_EXACT, NAME_NONE, NAME_PARTIAL, column_values, schema_items
from vantage_core.data.sql_actions import ITEM, QUESTION, VOCAB, SQLCodecError, encode_sql, render_sql
from vantage_plugins.linkers.lexical import link

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def toy_schema() -> Schema:
    return Schema("concerts", [
        Table("singer", [Column("singer_id", "number", "singer id"), Column("name", "text", "name"),
                         Column("country", "text", "country")], "singer", ["singer_id"]),
        Table("concert", [Column("concert_id", "number", "concert id"), Column("singer_id", "number", "singer id"),
                          Column("year", "number", "year")], "concert", ["concert_id"]),
    ], [ForeignKey("concert", "singer_id", "singer", "singer_id")])


@pytest.fixture
def toy_db(tmp_path) -> str:
    path = tmp_path / "concerts.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT)")
    conn.execute("CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, singer_id INTEGER, year INTEGER)")
    conn.executemany("INSERT INTO singer VALUES (?, ?, ?)", [(1, "Joe Sharp", "Netherlands"), (2, "Rose White", "France")])
    conn.executemany("INSERT INTO concert VALUES (?, ?, ?)", [(1, 1, 2014), (2, 2, 2015), (3, 1, 2015)])
    conn.commit()
    conn.close()
    return str(path)


def test_linking_marks_exact_partial_and_value_matches(toy_db):
    schema = toy_schema()
    items = schema_items(schema)
    names = [(it.table, it.column) for it in items]
    assert names[:2] == [("singer", None), ("concert", None)]
    words = "How many singers from France sang in concerts , by singer id ?".split()
    links = link(words, items, column_values(toy_db, schema))
    by = dict(zip(names, links.item_name))
    assert by[("singer", None)] == NAME_EXACT  # "singers" stems to "singer"
    assert by[("concert", None)] == NAME_EXACT
    assert by[("singer", "singer_id")] == NAME_EXACT  # "singer id" as consecutive words
    assert by[("concert", "year")] == NAME_NONE
    assert by[("concert", "concert_id")] == NAME_PARTIAL  # "concert" yes, "id" is a stopword
    value = dict(zip(names, links.item_value))
    assert value[("singer", "country")] == 1 and value[("singer", "name")] == 0
    assert links.word_value[words.index("France")] == 1
    assert links.word_table[words.index("singers")] == NAME_EXACT
    assert links.word_value[words.index("How")] == 0


def test_linking_without_values_and_multiword_values(toy_db):
    schema = toy_schema()
    items = schema_items(schema)
    links = link("Which country is Rose White from ?".split(), items, column_values(toy_db, schema))
    names = [(it.table, it.column) for it in items]
    assert dict(zip(names, links.item_value))[("singer", "name")] == 1
    assert link(["hello"], items, None).item_value == [0] * len(items)


def _pieces(question: str):
    """Whitespace 'pieces' with character offsets, like a tokenizer's."""
    offsets, pos = [], 0
    for w in question.split():
        start = question.index(w, pos)
        offsets.append((start, start + len(w)))
        pos = start + len(w)
    return offsets, [True] * len(offsets)


def test_codec_round_trip_resolves_aliases_and_copies_values(toy_db):
    schema = toy_schema()
    items = schema_items(schema)
    question = "Names of singers from france with a concert in 2015"
    offsets, copyable = _pieces(question)
    gold = ('SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id '
            'WHERE T1.country = "France" AND T2.year = 2015')
    actions = encode_sql(gold, items, question, offsets, copyable)
    kinds = [k for k, _ in actions]
    assert ("T1" not in str(actions)) and kinds.count(QUESTION) == 4  # two values, two pieces each
    assert (VOCAB, "<val>") in actions and (VOCAB, "<num>") in actions
    sql = render_sql(actions, items, question, offsets, {"france": "France"})
    assert "singer.name" in sql and "'France'" in sql and "2015" in sql
    conn = sqlite3.connect(toy_db)
    assert conn.execute(sql).fetchall() == conn.execute(gold).fetchall() == [("Rose White",)]


def test_codec_scopes_bare_columns_to_their_subquery():
    items = schema_items(toy_schema())
    q = "singers without concerts"
    offsets, copyable = _pieces(q)
    actions = encode_sql("SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert)",
                         items, q, offsets, copyable)
    pointed = [(items[v].table, items[v].column) for k, v in actions if k == ITEM]
    # FROM-first: each block names its tables before their columns
    assert pointed == [("singer", None), ("singer", "name"), ("singer", "singer_id"),
                       ("concert", None), ("concert", "singer_id")]
    words = [v for k, v in actions if k == VOCAB]
    assert words[:2] == ["from", "select"] and words[words.index("(") + 1] == "from"


def test_reorder_round_trips_set_operations_and_subqueries():
    from vantage_core.data.sql_actions import reorder

    sql = ("select a from t where b in ( select c from u where d > 1 ) "
           "intersect select count ( * ) from v join w on x = y group by z")
    acts = [(VOCAB, w) for w in sql.split()]
    front = reorder(acts, from_first=True)
    assert " ".join(v for _, v in front) == (
        "from t select a where b in ( from u select c where d > 1 ) "
        "intersect from v join w on x = y select count ( * ) group by z")
    assert reorder(front, from_first=False) == acts


def test_codec_refuses_self_joins_and_unknown_columns():
    items = schema_items(toy_schema())
    offsets, copyable = _pieces("x")
    with pytest.raises(SQLCodecError, match="self-join"):
        encode_sql("SELECT T1.name FROM singer AS T1 JOIN singer AS T2 ON T1.singer_id = T2.singer_id",
                   items, "x", offsets, copyable)
    with pytest.raises(SQLCodecError, match="unknown"):
        encode_sql("SELECT height FROM singer", items, "x", offsets, copyable)


def _toy_batch(d=384):
    rng = np.random.default_rng(0)
    B, Q, N = 2, 5, 4
    b = {"q_states": rng.normal(size=(B, Q, d)).astype(np.float32), "q_ids": np.ones((B, Q), np.int32),
         "q_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], bool), "q_copy": np.ones((B, Q), bool),
         "item_vec": rng.normal(size=(B, N, d)).astype(np.float32),
         "item_table_vec": rng.normal(size=(B, N, d)).astype(np.float32),
         "item_pieces": np.ones((B, N, 8), np.int32), "item_pieces_mask": np.ones((B, N, 8), bool),
         "table_pieces": np.ones((B, N, 8), np.int32), "table_pieces_mask": np.ones((B, N, 8), bool),
         "item_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)}
    for name in ("item_type", "item_key", "item_link_name", "item_link_value"):
        b[name] = np.zeros((B, N), np.int32)
    for name in ("q_link_table", "q_link_column", "q_link_value"):
        b[name] = np.zeros((B, Q), np.int32)
    return {k: mx.array(v) for k, v in b.items()}


@pytest.mark.parametrize("question_input", ["minilm", "embed"])
def test_pointer_model_scores_and_constrained_beam(question_input):
    from vantage_core.data.sql_actions import EOS, SPECIALS
    from vantage_core.inference.pointer_search import beam_search
    from vantage_core.model.pointer import PointerArgs, PointerSQL

    itos = SPECIALS + ["select", "from", "(", ")", "count", "*"]
    mx.random.seed(0)
    model = PointerSQL(PointerArgs(vocab_size=len(itos), d_model=32, n_heads=2, ffn_hidden=64, dropout=0.0,
                                   question_input=question_input, wordpiece_vocab=50, num_experts=4))
    b = _toy_batch()
    q, it, qm, im = model.encode(b)
    assert q.shape == (2, 5, 32) and it.shape == (2, 4, 32)
    kinds = mx.array([[VOCAB, ITEM, QUESTION], [VOCAB, VOCAB, ITEM]])
    values = mx.array([[1, 2, 3], [1, 7, 1]])
    scores, aux = model.decode(kinds, values, q, it, qm, im)
    assert scores.shape == (2, 3, len(itos) + 4 + 5)
    # padded items and question pieces of example 1 can never be chosen
    assert float(scores[1, :, len(itos) + 2:len(itos) + 4].max()) < -1e8
    assert float(scores[1, :, len(itos) + 4 + 3:].max()) < -1e8
    assert beam_search(model, b, itos, beam=3, max_steps=1) == [[], []]  # cut off: nothing finished
    decode = model.decode  # an untrained model rarely selects and ends: make both likelier, so beams finish
    bonus = mx.zeros(len(itos) + 4 + 5).at[itos.index(EOS)].add(3.0).at[itos.index("select")].add(2.0)
    model.decode = lambda *args: (decode(*args)[0] + bonus, decode(*args)[1])
    results = beam_search(model, b, itos, beam=3, max_steps=20)
    assert len(results) == 2
    assert all(results)
    for i, hyps in enumerate(results):
        assert len(hyps) <= 3
        for actions, score in hyps:
            assert np.isfinite(score)
            depth = 0
            for k, v in actions:
                if k == ITEM:
                    assert bool(b["item_mask"][i, v])
                if k == VOCAB:
                    assert itos[v] not in ("<pad>", "<s>")
                    depth += (itos[v] == "(") - (itos[v] == ")")
                    assert depth >= 0
            values_ok = [j for j, (k, v) in enumerate(actions) if k == QUESTION]
            for j in values_ok:  # question pieces appear only right after a value marker
                assert actions[j - 1][0] == QUESTION or itos[actions[j - 1][1]] in ("<val>", "<likeval>", "<num>")
    assert EOS in itos


def test_recipe_config_validates_and_rejects_bad_fields(tmp_path):
    from spider_recipe import load_config

    from vantage_core.errors import ConfigError

    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"))
    assert cfg.train.minutes <= 60 and cfg.model.question_input == "minilm" and cfg.decode.constrained
    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"), ["model.link_features=false", "decode.beam=1"])
    assert cfg.model.link_features is False and cfg.decode.beam == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {question_input: glove}\n")
    with pytest.raises(ConfigError, match="question_input"):
        load_config(str(bad))
    bad.write_text("train: {minutez: 3}\n")
    with pytest.raises(ConfigError, match="minutez"):
        load_config(str(bad))
    bad.write_text("model: {router: {name: topq}}\n")
    with pytest.raises(ConfigError, match=r"model.router: unknown router 'topq'; registered: .*topk"):
        load_config(str(bad))
    bad.write_text("model: {expert: {name: swiglu, params: {hiden: 3}}}\n")
    with pytest.raises(ConfigError, match=r"model.expert: expert 'swiglu' takes no parameter 'hiden'"):
        load_config(str(bad))


def test_recipe_model_section_is_the_model_arguments():
    """The config's model section builds PointerArgs field for field (no second copy to drift)."""
    from dataclasses import fields

    from spider_recipe import RecipeModel

    from vantage_core.model.pointer import PointerArgs

    assert set(RecipeModel.model_fields) <= {f.name for f in fields(PointerArgs)}


@pytest.mark.data
def test_codec_round_trips_real_spider_queries(shared_data):
    """Gold -> actions -> SQL gives the gold's result on at least 95% of a sample."""
    import random

    from vantage_core.data.linking import cased_values
    from vantage_plugins.datasets.spider import SpiderDataset

    exs = SpiderDataset(str(shared_data / "spider")).load("train").examples
    sample = random.Random(1).sample(exs, 60)
    same = 0
    for ex in sample:
        offsets, copyable = _pieces(ex.question)
        try:
            acts = encode_sql(ex.sql, schema_items(ex.schema), ex.question, offsets, copyable)
        except SQLCodecError:
            continue
        sql = render_sql(acts, schema_items(ex.schema), ex.question, offsets, cased_values(ex.db_paths[0]))
        conn = sqlite3.connect(f"file:{ex.db_paths[0]}?mode=ro", uri=True)
        try:
            same += sorted(map(str, conn.execute(sql).fetchall())) == sorted(map(str, conn.execute(ex.sql).fetchall()))
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    assert same >= 0.95 * len(sample), same


@pytest.mark.data
def test_decoding_constraints_allow_real_spider_queries(shared_data):
    """The validity rules of the beam search forbid a step of at most 2% of real gold queries
    (joins off a foreign key, FROM subqueries, an outer column inside a subquery): the rules
    cut what SQLite rejects, not what Spider's authors wrote."""
    import random

    from vantage_core.data.sql_actions import BOS, CLAUSES, EOS, PAD, SPECIALS, UNK_LIT
    from vantage_core.inference.pointer_search import Hyp, _advance, _allowed, fk_partners
    from vantage_plugins.datasets.spider import SpiderDataset

    itos = SPECIALS + sorted({"select", "from", "join", "on", "=", "(", ")", ",", "*", "and", "or", "not", "in",
                              "by", "count", "sum", "avg", "min", "max", "distinct", "desc", "asc", "like",
                              ">", "<", ">=", "<=", "!=", "union", "intersect", "except", "between", "as",
                              "exists", "-", "+", "/"} | set(CLAUSES))
    ids = {t: i for i, t in enumerate(itos)}
    V = len(itos)
    vocab_ok = np.ones(V, bool)
    vocab_ok[[ids[PAD], ids[BOS]]] = False
    exs = SpiderDataset(str(shared_data / "spider")).load("train").examples
    checked = refused = 0
    for ex in random.Random(2).sample(exs, 400):
        offsets, copyable = _pieces(ex.question)
        items = schema_items(ex.schema)
        try:
            acts = encode_sql(ex.sql, items, ex.question, offsets, copyable)
        except SQLCodecError:
            continue
        checked += 1
        fks = fk_partners(items, ex.schema.foreign_keys)
        h = Hyp([(VOCAB, ids[BOS])], 0.0)
        N, Q = len(items), len(offsets)
        for kind, value in acts + [(VOCAB, EOS)]:
            v = ids.get(value, ids[UNK_LIT]) if kind == VOCAB else value
            m = _allowed(h, V, N, Q, vocab_ok, np.ones(N, bool), np.ones(Q, bool), ids, True, None, items, itos, fks)
            if not np.isfinite(m[v if kind == VOCAB else V + v if kind == ITEM else V + N + v]):
                refused += 1
                break
            h = _advance(h, kind, v, 0.0, itos, items)
    assert checked >= 380 and refused <= 0.02 * checked, (refused, checked)


def test_constraints_name_tables_before_their_columns():
    """FROM-first decoding: tables only after FROM/JOIN and never twice in a block, columns only
    of tables already named in the same block, a join relates two tables."""
    from vantage_core.data.sql_actions import SPECIALS
    from vantage_core.inference.pointer_search import Hyp, _advance, _allowed, fk_partners

    items = schema_items(toy_schema())  # singer, concert, then singer's 3 columns, concert's 3
    itos = SPECIALS + ["select", "from", "join", "on", "=", "where", "in", "(", ")"]
    ids = {t: i for i, t in enumerate(itos)}
    V, N, Q = len(itos), len(items), 3
    vocab_ok = np.ones(V, bool)
    vocab_ok[[ids["<pad>"], ids["<s>"]]] = False

    def allowed_items(h):
        m = _allowed(h, V, N, Q, vocab_ok, np.ones(N, bool), np.ones(Q, bool), ids, True, None, items, itos)
        return {(items[j].table, items[j].column) for j in np.flatnonzero(np.isfinite(m[V:V + N]))}

    def step(h, tok):
        return _advance(h, VOCAB, ids[tok], 0.0, itos, items) if isinstance(tok, str) else \
            _advance(h, ITEM, tok, 0.0, itos, items)

    h = Hyp([(VOCAB, ids["<s>"])], 0.0)
    assert allowed_items(h) == set()  # nothing named yet: no column, and no table before FROM
    h = step(h, "from")
    assert allowed_items(h) == {("singer", None), ("concert", None)}
    h = step(h, 0)  # singer
    assert allowed_items(h) == {("singer", c) for c in ("singer_id", "name", "country")}
    h = step(h, "join")
    assert allowed_items(h) == {("concert", None)}  # singer is already named in this block
    h = step(step(h, 1), "on")
    fks = fk_partners(items, toy_schema().foreign_keys)
    m = _allowed(h, V, N, Q, vocab_ok, np.ones(N, bool), np.ones(Q, bool), ids, True, None, items, itos, fks)
    on_items = {(items[j].table, items[j].column) for j in np.flatnonzero(np.isfinite(m[V:V + N]))}
    assert on_items == {("singer", "singer_id"), ("concert", "singer_id")}  # the foreign key's two ends
    h = step(h, 2)  # ... join concert on singer.singer_id
    h = step(h, "=")
    assert allowed_items(h) == {("concert", c) for c in ("concert_id", "singer_id", "year")}
    m = _allowed(h, V, N, Q, vocab_ok, np.ones(N, bool), np.ones(Q, bool), ids, True, None, items, itos, fks)
    assert [(items[j].table, items[j].column) for j in np.flatnonzero(np.isfinite(m[V:V + N]))] == \
        [("concert", "singer_id")]
    padded = np.array([True] * N + [False, False])  # a batch pads items to its widest schema
    m = _allowed(h, V, N + 2, Q, vocab_ok, padded, np.ones(Q, bool), ids, True, None, items, itos, fks)
    assert np.flatnonzero(np.isfinite(m[V:V + N + 2])).tolist() == [N - 2]
    for tok in (6, "select", 3, "where", 2, "in", "(", "from", 1):  # ... in ( from concert
        h = step(h, tok)
    assert h.blocks == ((0, 1), (1,))
    # only the subquery's own tables: an outer column inside it is what SQLite rejects as
    # "misuse of aggregate" (8 of 5,774 Spider training queries refer to an outer block)
    assert allowed_items(h) == {("concert", c) for c in ("concert_id", "singer_id", "year")}
    h = step(h, ")")
    assert h.blocks == ((0, 1),)
    assert ("singer", "name") in allowed_items(step(h, "and")) if "and" in ids else True


def test_select_list_rules():
    """A compared subquery selects one item, the right side of a set operation as many as the
    left, ``*`` only in ``SELECT *`` and ``count(*)``, and no select item twice."""
    from vantage_core.data.sql_actions import EOS, SPECIALS
    from vantage_core.inference.pointer_search import Hyp, _advance, _allowed

    items = schema_items(toy_schema())  # singer, concert, singer's singer_id/name/country, concert's 3
    itos = SPECIALS + ["select", "from", "where", "in", "(", ")", ",", "*", "count", "min", "union", "join", "on",
                       "group", "by", "order", "limit"]
    ids = {t: i for i, t in enumerate(itos)}
    V, N, Q = len(itos), len(items), 3
    vocab_ok = np.ones(V, bool)
    vocab_ok[[ids["<pad>"], ids["<s>"]]] = False

    def ok(h):
        m = _allowed(h, V, N, Q, vocab_ok, np.ones(N, bool), np.ones(Q, bool), ids, True, None, items, itos)
        return {itos[j] for j in np.flatnonzero(np.isfinite(m[:V]))}, \
            {j for j in np.flatnonzero(np.isfinite(m[V:V + N]))}

    def run(*toks):
        h = Hyp([(VOCAB, ids["<s>"])], 0.0)
        for t in toks:
            h = _advance(h, VOCAB, ids[t], 0.0, itos, items) if isinstance(t, str) else \
                _advance(h, ITEM, t, 0.0, itos, items)
        return h

    vocab, cols = ok(run("from", 0, "select"))
    assert "*" in vocab and cols == {2, 3, 4}
    vocab, cols = ok(run("from", 0, "select", 3, ","))
    assert 3 not in cols and cols == {2, 4}  # singer.name is already selected
    assert "*" not in ok(run("from", 0, "select", 3, ","))[0]
    assert "*" in ok(run("from", 0, "select", "count", "("))[0]
    assert "*" not in ok(run("from", 0, "select", "min", "("))[0]
    # where singer_id in ( from concert select singer_id ...: one item, then only ")" may close it
    sub = run("from", 0, "select", 3, "where", 2, "in", "(", "from", 1, "select", 6)
    vocab, _ = ok(sub)
    assert ")" in vocab and "," not in vocab
    # ... union from concert select: two items on the left, so two on the right
    right = run("from", 0, "select", 3, ",", 4, "union", "from", 1, "select", 5)
    vocab, _ = ok(right)
    assert "," in vocab and EOS not in vocab and ")" not in vocab
    vocab, _ = ok(run("from", 0, "select", 3, ",", 4, "union", "from", 1, "select", 5, ",", 7))
    assert EOS in vocab and "," not in vocab
    # FROM first: a block selects before any clause or the end; ON is followed by a column
    vocab, _ = ok(run("from", 0))
    assert "select" in vocab and "join" in vocab and not {"where", "order", "union", EOS} & vocab
    vocab, cols = ok(run("from", 0, "join", 1, "on"))
    assert vocab == set() and cols
    # clauses once each, in SQL's order
    vocab, _ = ok(run("from", 0, "select", 3, "order", "by", 4))
    assert "limit" in vocab and not {"where", "group", "order"} & vocab
    vocab, _ = ok(run("from", 0, "select", 3, "where", 4, "in", "(", "from", 1, "select", 6, ")"))
    assert {"group", "order", "limit"} <= vocab and "where" not in vocab


def test_ablation_sweep_variants_validate():
    import yaml
    from spider_recipe import load_config

    spec = yaml.safe_load((REPO / "configs" / "spider_ablations" / "sweep.yaml").read_text())
    assert spec["steps"] > 0 and {"full", "no_linking", "trainable_enc", "no_encoder"} <= set(spec["variants"])
    for name, overrides in spec["variants"].items():
        cfg = load_config(str(REPO / spec["base"]), [f"train.max_steps={spec['steps']}"] + overrides)
        assert cfg.train.max_steps == spec["steps"], name
    assert load_config(str(REPO / spec["base"]), spec["variants"]["no_encoder"]).model.encoder_layers == 0


def test_recipe_script_overrides_validate():
    """Every `--set` of scripts/spider_recipe.sh names a real config field with a valid value."""
    import shlex

    from spider_recipe import load_config

    text = (REPO / "scripts" / "spider_recipe.sh").read_text().replace("\\\n", " ")
    commands = [line for line in text.splitlines() if "--set" in line]
    assert len(commands) >= 8
    for line in commands:
        words = shlex.split(line.split("#")[0].replace("$s", "1"))
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"), sets)
        assert cfg.decode.beam >= 1, line


def test_error_breakdown_sorts_wrong_answers_by_shape(tmp_path):
    from spider_recipe import error_breakdown

    def row(question, gold, pred, ok):
        return json.dumps({"question": question, "gold": gold, "prediction": pred,
                           "scores": {"execution": {"exec": int(ok)}}})

    rows = [row("How many singers?", "SELECT count(*) FROM singer", "select count ( * ) from singer", True),
            row("Names of singers in concerts?",
                "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id",
                "select singer.name from singer", False),
            row("Name and country of singers?", "SELECT name, country FROM singer", "select singer.name from singer", False),
            row("Female singers?", "SELECT name FROM singer WHERE sex = 'F'",
                "select singer.name from singer group by singer.name", False)]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(rows) + "\n")
    out = error_breakdown(path)
    assert out["wrong"] == 3
    assert out["gold joins, prediction does not"] == 1
    assert out["other number of SELECT items"] == out["fewer SELECT items"] == 1
    assert out["GROUP BY differs"] == 1
    assert out["gold string value not in the question"] == 1
