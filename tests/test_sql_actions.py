"""Schema linking on a toy schema and the SQL <-> action codec (``data.target: actions``)."""

from __future__ import annotations

import sqlite3

import pytest

from vantage_core.sql.schema import Column, ForeignKey, Schema, Table
from vantage_core.data.linking import NAME_EXACT, NAME_NONE, NAME_PARTIAL, column_values, schema_items
from vantage_core.data.sql_actions import ITEM, QUESTION, VOCAB, SQLCodecError, encode_sql, render_sql
from vantage_plugins.linkers.lexical import link


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
