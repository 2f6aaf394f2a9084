"""The ``sql_actions`` constraint: what a pointer model may write next, on a toy schema and on
real Spider gold queries."""

from __future__ import annotations

import numpy as np
import pytest

from vantage_core.data.linking import schema_items
from vantage_core.data.sql_actions import BOS, CLAUSES, EOS, ITEM, PAD, SPECIALS, UNK_LIT, VOCAB, SQLCodecError, \
    encode_sql
from vantage_plugins.constraints.sql_actions import SQLActionsConstraint, SQLActionsProcessor, fk_partners

from test_sql_actions import _pieces, toy_schema

TOY_VOCAB = ["select", "from", "join", "on", "=", "where", "in", "(", ")", ",", "*", "count", "min", "union",
             "group", "by", "order", "limit", "and"]


class Vocab:
    """The action vocabulary's interface the constraint reads."""

    def __init__(self, tokens):
        self.itos = SPECIALS + list(tokens)
        self.stoi = {t: i for i, t in enumerate(self.itos)}


def processor(schema=None, n_pieces: int = 3, fk_joins: bool = True) -> tuple[SQLActionsProcessor, Vocab]:
    schema = schema or toy_schema()
    vocab = Vocab(TOY_VOCAB)
    features = {"copy": [True] * n_pieces, "start": [True] * n_pieces}
    return SQLActionsConstraint(fk_joins).bind(schema, vocab, vocab.stoi[EOS], features=features), vocab


def ids(vocab: Vocab, *steps) -> list[int]:
    """Keyword strings and item indices -> output ids (items after the vocabulary)."""
    return [vocab.stoi[s] if isinstance(s, str) else len(vocab.itos) + s for s in steps]


def allowed(proc: SQLActionsProcessor, vocab: Vocab, *steps) -> tuple[set[str], set[tuple]]:
    m = proc.mask(ids(vocab, *steps))
    V, N = proc.V, proc.N
    words = {vocab.itos[j] for j in np.flatnonzero(np.isfinite(m[:V]))}
    items = {(proc.items[j].table, proc.items[j].column) for j in np.flatnonzero(np.isfinite(m[V:V + N]))}
    return words, items


def test_tables_before_their_columns_and_joins_along_foreign_keys():
    """FROM first: tables only after FROM/JOIN and never twice in a block, columns only of tables
    already named in the same block, a join condition relates two tables along a foreign key."""
    proc, vocab = processor()  # items: singer, concert, singer's 3 columns, concert's 3
    assert allowed(proc, vocab)[1] == set()  # nothing named yet: no column, no table before FROM
    assert allowed(proc, vocab, "from")[1] == {("singer", None), ("concert", None)}
    assert allowed(proc, vocab, "from", 0)[1] == {("singer", c) for c in ("singer_id", "name", "country")}
    assert allowed(proc, vocab, "from", 0, "join")[1] == {("concert", None)}  # singer is already named
    words, on_items = allowed(proc, vocab, "from", 0, "join", 1, "on")
    assert words == set() and on_items == {("singer", "singer_id"), ("concert", "singer_id")}
    words, right = allowed(proc, vocab, "from", 0, "join", 1, "on", 2, "=")
    assert words == set() and right == {("concert", "singer_id")}  # the foreign key's other end
    free, _ = processor(fk_joins=False)
    assert allowed(free, vocab, "from", 0, "join", 1, "on", 2, "=")[1] == \
        {("concert", c) for c in ("concert_id", "singer_id", "year")}
    sub = ("from", 0, "join", 1, "on", 2, "=", 6, "select", 3, "where", 2, "in", "(", "from", 1)
    assert proc.state(ids(vocab, *sub)).blocks == ((0, 1), (1,))
    # only the subquery's own tables: an outer column inside it is what SQLite rejects as
    # "misuse of aggregate" (8 of 5,774 Spider training queries refer to an outer block)
    assert allowed(proc, vocab, *sub)[1] == {("concert", c) for c in ("concert_id", "singer_id", "year")}
    closed = sub + ("select", 6, ")")
    assert proc.state(ids(vocab, *closed)).blocks == ((0, 1),)
    assert ("singer", "name") in allowed(proc, vocab, *closed, "and")[1]  # the outer block's columns again


def test_select_list_rules():
    """A compared subquery selects one item, the right side of a set operation as many as the
    left, ``*`` only in ``SELECT *`` and ``count(*)``, no select item twice, clauses in order."""
    proc, vocab = processor()
    words, cols = allowed(proc, vocab, "from", 0, "select")
    assert "*" in words and cols == {("singer", c) for c in ("singer_id", "name", "country")}
    words, cols = allowed(proc, vocab, "from", 0, "select", 3, ",")
    assert ("singer", "name") not in cols and "*" not in words  # singer.name is already selected
    assert "*" in allowed(proc, vocab, "from", 0, "select", "count", "(")[0]
    assert "*" not in allowed(proc, vocab, "from", 0, "select", "min", "(")[0]
    words, _ = allowed(proc, vocab, "from", 0, "select", 3, "where", 2, "in", "(", "from", 1, "select", 6)
    assert ")" in words and "," not in words  # a compared subquery selects one item
    words, _ = allowed(proc, vocab, "from", 0, "select", 3, ",", 4, "union", "from", 1, "select", 5)
    assert "," in words and EOS not in words  # two on the left, so two on the right
    words, _ = allowed(proc, vocab, "from", 0, "select", 3, ",", 4, "union", "from", 1, "select", 5, ",", 7)
    assert EOS in words and "," not in words
    words, _ = allowed(proc, vocab, "from", 0)
    assert {"select", "join"} <= words and not {"where", "order", "union", EOS} & words
    words, _ = allowed(proc, vocab, "from", 0, "select", 3, "order", "by", 4)
    assert "limit" in words and not {"where", "group", "order"} & words
    assert proc.finalize(ids(vocab, "from", 0, "select", 3)) == ids(vocab, "from", 0, "select", 3)
    assert proc.finalize(ids(vocab, "from", 0, "select", 3, "where")) is None  # not a whole query


def test_processor_masks_logits_and_refuses_a_mismatched_model():
    import mlx.core as mx

    proc, vocab = processor(n_pieces=3)
    width = proc.V + proc.N + proc.Q
    out = proc([ids(vocab, "from"), []], mx.zeros((2, width)))
    assert np.isfinite(np.array(out[0, proc.V:proc.V + 2])).all() and not np.isfinite(np.array(out[0, :proc.V])).any()
    assert not np.isfinite(np.array(out[1, vocab.stoi[PAD]])) and not np.isfinite(np.array(out[1, vocab.stoi[BOS]]))
    with pytest.raises(ValueError, match="scores 5 actions"):
        proc([[]], mx.zeros((1, 5)))


def test_bind_needs_a_pointer_model():
    from vantage_core.errors import ConfigError

    with pytest.raises(ConfigError, match="sql_schema"):
        SQLActionsConstraint().bind(toy_schema(), object(), 2)


@pytest.mark.data
def test_rules_allow_real_spider_queries(shared_data):
    """Walk 400 real gold queries through the rules: at most 2% have a step forbidden (joins off
    a foreign key, FROM subqueries, an outer column inside a subquery): the rules cut what SQLite
    rejects, not what Spider's authors wrote."""
    import random

    from vantage_plugins.datasets.spider import SpiderDataset

    vocab = Vocab(sorted({"select", "from", "join", "on", "=", "(", ")", ",", "*", "and", "or", "not", "in",
                          "by", "count", "sum", "avg", "min", "max", "distinct", "desc", "asc", "like",
                          ">", "<", ">=", "<=", "!=", "union", "intersect", "except", "between", "as",
                          "exists", "-", "+", "/"} | set(CLAUSES)))
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
        proc = SQLActionsConstraint().bind(ex.schema, vocab, vocab.stoi[EOS],
                                           features={"copy": copyable, "start": copyable})
        assert proc.fks == fk_partners(items, ex.schema.foreign_keys)
        V, N = proc.V, proc.N
        generated: list[int] = []
        for kind, value in acts + [(VOCAB, EOS)]:
            i = vocab.stoi.get(value, vocab.stoi[UNK_LIT]) if kind == VOCAB else V + value if kind == ITEM \
                else V + N + value
            if not np.isfinite(proc.mask(generated)[i]):
                refused += 1
                break
            generated.append(i)
    assert checked >= 380 and refused <= 0.02 * checked, (refused, checked)
