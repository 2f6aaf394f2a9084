"""Link dropout (``data.link_dropout``): training batches in which some schema items lose their name
matches (exact and partial) while value matches stay; validation and the prepared splits untouched."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401

from vantage_core.config import load_config
from vantage_core.data.actions import REL, collate_rows, featurize, hidden_items, relation_matrix, without_name_links
from vantage_core.data.example import Example
from vantage_core.data.linking import NAME_EXACT, PAIR_VALUE, column_values, schema_items
from vantage_plugins.linkers.lexical import LexicalLinker

from test_relations import QUESTION, WordTokenizer
from test_sql_actions import toy_db, toy_schema  # noqa: F401  (toy_db is a fixture)

POINTER = Path(__file__).parent / "fixtures" / "train_tiny_pointer.yaml"
NAME_RELATIONS = {REL[f"{a}-{b}"] for a in ("q-col", "q-table", "col-q", "table-q") for b in ("partial", "exact")}
PLAIN_RELATIONS = {REL[n] for n in ("q-col", "q-table", "col-q", "table-q")}


@pytest.fixture
def toy(toy_db):  # noqa: F811
    schema = toy_schema()
    ex = Example(question=QUESTION, sql="", db_id="concerts", schema=schema, db_paths=[toy_db])
    items = schema_items(schema)
    f = featurize(ex, WordTokenizer(), LexicalLinker(), column_values(toy_db, schema))
    piece = {w: p + 1 for p, w in enumerate(QUESTION.split())}  # [CLS] first
    return f, {(it.table, it.column): k for k, it in enumerate(items)}, piece


def hide(f: dict, *keys: int) -> np.ndarray:
    mask = np.zeros(len(f["item_texts"]), bool)
    mask[list(keys)] = True
    return mask


def test_a_hidden_column_loses_its_name_pairs_but_shared_tags_stay(toy):
    """Hiding singer.singer_id: its name match and name pairs go; the pieces "singer" and "id" keep
    their column tag, which concert.singer_id gives them too; the input features are not changed."""
    f, at, piece = toy
    sid, c_sid = at[("singer", "singer_id")], at[("concert", "singer_id")]
    before = copy.deepcopy(f)
    g = without_name_links(f, hide(f, sid))
    assert f == before
    assert g["item_link_name"][sid] == 0 and g["item_link_name"][c_sid] == f["item_link_name"][c_sid] == NAME_EXACT
    assert [k for _, k, _ in f["q_item_links"]].count(sid) > 0
    assert all(k != sid for _, k, _ in g["q_item_links"])
    assert g["q_item_links"] == [link for link in f["q_item_links"] if link[1] != sid]
    assert g["q_link_column"] == f["q_link_column"]
    assert g["q_link_column"][piece["singer"]] == g["q_link_column"][piece["id"]] == NAME_EXACT
    rel = relation_matrix([g], len(g["q_ids"]), len(g["item_texts"]))[0]
    Q = len(g["q_ids"])
    assert rel[piece["singer"], Q + sid] == REL["q-col"] and rel[Q + sid, piece["id"]] == REL["col-q"]
    assert rel[piece["singer"], Q + c_sid] == REL["q-col-exact"]


def test_a_hidden_table_takes_the_tags_only_it_gave(toy):
    """Hiding the table singer: "singers" and "singer" lose their table tags (no other table is
    named by them), the column tags and the value match of "France" stay."""
    f, at, piece = toy
    g = without_name_links(f, hide(f, at[("singer", None)]))
    assert f["q_link_table"][piece["singers"]] == NAME_EXACT
    assert g["q_link_table"][piece["singers"]] == g["q_link_table"][piece["singer"]] == 0
    assert g["q_link_table"][piece["concert"]] == f["q_link_table"][piece["concert"]] == NAME_EXACT
    assert g["q_link_column"] == f["q_link_column"]
    assert g["q_link_value"] == f["q_link_value"] and g["item_link_value"] == f["item_link_value"]


def test_hiding_every_item_keeps_only_the_value_matches(toy):
    """Every item hidden: no name feature is left anywhere, and the value pair France -> country is."""
    f, at, piece = toy
    g = without_name_links(f, np.ones(len(f["item_texts"]), bool))
    assert any(f["item_link_name"]) and any(f["q_link_table"]) and any(f["q_link_column"])
    assert not any(g["item_link_name"]) and not any(g["q_link_table"]) and not any(g["q_link_column"])
    assert g["q_item_links"] == [link for link in f["q_item_links"] if link[2] == PAIR_VALUE]
    assert [piece["France"], at[("singer", "country")], PAIR_VALUE] in g["q_item_links"]
    assert g["item_link_value"] == f["item_link_value"] and g["q_link_value"] == f["q_link_value"]


def test_an_item_without_a_name_match_changes_nothing(toy):
    """Hiding singer.country (a value match only) gives the features back as they were."""
    f, at, _ = toy
    assert without_name_links(f, hide(f, at[("singer", "country")])) is f


def test_hidden_items_are_drawn_from_seed_batch_and_row():
    """The draw is a function of (seed, batch index, row): repeated, the same; any of them changed,
    another; about p of the items."""
    a = hidden_items(0.5, 0, 7, 3, 400)
    assert (a == hidden_items(0.5, 0, 7, 3, 400)).all()
    for other in (hidden_items(0.5, 1, 7, 3, 400), hidden_items(0.5, 0, 8, 3, 400), hidden_items(0.5, 0, 7, 4, 400)):
        assert (a != other).any()
    assert 0.4 < a.mean() < 0.6 and not hidden_items(0.0, 0, 7, 3, 400).any()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The tiny pointer config's training data without and with link dropout (one feature cache)."""
    from vantage_core.plugins import registry
    from vantage_core.train.distributed import init_world
    from vantage_core.train.run import training_data

    root = tmp_path_factory.mktemp("link_dropout")
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(root / "cache"))
        for p in (0.0, 0.5):
            cfg = load_config(POINTER, [f"data.link_dropout={p}"])
            out[p] = training_data(cfg, registry(), init_world(), root / f"tok{p}", lambda *_: None, progress=False)
    return out


def batches(data, n=6, size=8):
    """``n`` global training batches of ``size`` rows: (index, rows, batch)."""
    rng = np.random.default_rng(0)
    for index in range(n):
        rows = rng.choice(len(data.train), size, replace=False)
        yield index, rows, data.collate(rows, index)


def test_training_batches_lose_only_name_matches(data):
    """With data.link_dropout 0.5 the batches' name features (item_link_name, the pieces'
    table/column tags, the name relations) lose matches, only ever down to none; the value
    features, the targets and every other relation are those of the batch without dropout."""
    changed = 0
    for index, rows, plain in batches(data[0.0]):
        dropped = data[0.5].collate(rows, index)
        for key in ("item_link_value", "q_link_value", "q_ids", "item_type", "tokens", "targets", "loss_mask"):
            assert (dropped[key] == plain[key]).all(), key
        for key in ("item_link_name", "q_link_table", "q_link_column"):
            assert ((dropped[key] == plain[key]) | (dropped[key] == 0)).all(), key
        diff = dropped["relations"] != plain["relations"]
        assert set(plain["relations"][diff].tolist()) <= NAME_RELATIONS
        assert set(dropped["relations"][diff].tolist()) <= PLAIN_RELATIONS
        changed += int((dropped["item_link_name"] != plain["item_link_name"]).sum())
        assert diff.any() == (dropped["item_link_name"] != plain["item_link_name"]).any()
        again = data[0.5].collate(rows, index)
        assert all(np.array_equal(again[k], dropped[k]) for k in ("item_link_name", "q_link_column", "relations"))
    named = sum(int((b["item_link_name"] > 0).sum()) for _, _, b in batches(data[0.0]))
    assert 0.3 * named < changed < 0.7 * named  # about half of the name matches hidden


def test_no_dropout_gives_the_batches_collate_rows_gives(data):
    """data.link_dropout 0 (the default): every training batch is the plain collate of its rows."""
    d = data[0.0]
    for index, rows, batch in batches(d):
        plain = collate_rows(d.train, rows, d.tokenizer)
        assert batch.keys() == plain.keys()
        for key, value in plain.items():
            assert np.array_equal(batch[key], value) if isinstance(value, np.ndarray) else batch[key] == value, key


def test_validation_and_the_prepared_splits_stay_untouched(data):
    """Drawing dropout batches changes no prepared feature (the training split with dropout on still
    holds what the one with dropout off holds); neither does the validation split."""
    list(batches(data[0.5]))
    assert data[0.5].train.feats == data[0.0].train.feats
    assert data[0.5].validation.feats == data[0.0].validation.feats
    assert any(any(f["item_link_name"]) for f in data[0.5].validation.feats)
