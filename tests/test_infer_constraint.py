"""The sql_schema constraint: every finished output parses (sqlglot, SQLite) and names only
schema items, whatever the model prefers."""


import numpy as np
import pytest

from infer_standins import ToyDecoder
import mlx.core as mx

from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.inference.constraints import schema_violations
from vantage_core.inference.decoding import Search, decode
from vantage_core.plugins import registry
from vantage_plugins.constraints.sql_schema import lex

SCHEMA = Schema("concerts", [
    Table("singer", [Column("singer_id"), Column("name"), Column("country"), Column("age", "number")]),
    Table("concert", [Column("concert_id"), Column("concert_name"), Column("year", "number"), Column("singer_id")]),
])
QUERIES = [
    "SELECT name FROM singer",
    "SELECT count(*) FROM singer WHERE age > 30",
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id WHERE T2.year = 2014",
    "SELECT name , country FROM singer ORDER BY age DESC LIMIT 3",
    "SELECT country , avg(age) FROM singer GROUP BY country HAVING count(*) > 1",
    "SELECT name FROM singer WHERE singer_id NOT IN (SELECT singer_id FROM concert)",
    "SELECT concert_name FROM concert WHERE year BETWEEN 2010 AND 2015 UNION SELECT name FROM singer",
    "SELECT DISTINCT country FROM singer WHERE name LIKE '%Jo%' AND age IS NOT NULL",
    "SELECT max(age) - min(age) FROM singer",
]
BAD = ["SELECT nam FROM singer", "SELECT name FROM singers", "SELECT name FROM", "SELECT name FROM singer WHERE",
       "SELECT name FROM singer WHERE (age > 3", "SELECT FROM singer", "SELECT year FROM concert LIMIT x"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from vantage_core.data.tokenizer import SentencePieceTokenizer

    corpus = QUERIES * 20 + ["how many singers are older than 30?", "list the names of concerts in 2014"] * 20
    return SentencePieceTokenizer(vocab_size=400).train(corpus)


@pytest.fixture(scope="module")
def processor(tokenizer):
    c = registry().build("constraint", "sql_schema")
    return c.bind(SCHEMA, tokenizer, tokenizer.eos_id)


def test_registered_under_its_config_name():
    assert "sql_schema" in registry().names("constraint")


def test_lexer_splits_and_keeps_the_unfinished_lexeme():
    assert lex("SELECT T1.name FROM sin") == ([("word", "SELECT"), ("word", "T1"), ("op", "."), ("word", "name"),
                                              ("word", "FROM")], "word", "sin")
    assert lex("x = 'it''s") == ([("word", "x"), ("op", "=")], "str", "'it''s")
    assert lex("a >= 1a") is None


def test_gold_queries_are_accepted_token_by_token(tokenizer, processor):
    for q in QUERIES:
        assert schema_violations(q, SCHEMA) == []
        ids = tokenizer.encode(q)
        for k in range(len(ids)):
            assert processor.allowed(ids[:k])[ids[k]], (q, tokenizer.decode(ids[:k + 1]))
        assert processor.allowed(ids)[tokenizer.eos_id], q
        assert not processor.allowed(ids[:-1])[tokenizer.eos_id] or processor.is_complete(ids[:-1])


def test_bad_queries_are_refused_or_cannot_end(tokenizer, processor):
    for q in BAD:
        ids = tokenizer.encode(q)
        ok = all(processor.allowed(ids[:k])[ids[k]] for k in range(len(ids)))
        assert not (ok and processor.allowed(ids)[tokenizer.eos_id]), q
        assert schema_violations(q, SCHEMA), q


def test_schema_violations_reports_unknown_names():
    assert "unknown table 'singers'" in schema_violations("SELECT name FROM singers", SCHEMA)
    assert any("unknown column" in p for p in schema_violations("SELECT height FROM singer", SCHEMA))
    assert schema_violations("SELECT name FROM singer WHERE name = \"Bob\"", SCHEMA) == []  # SQLite string fallback


def _gold_following(tokenizer, gold: str, noise_seed: int, strength: float = 4.5):
    """A noisy stand-in for a trained model: random logits plus a pull towards the gold query's
    token at the same position (and towards EOS after it), so outputs deviate and rejoin."""
    gold_ids = tokenizer.encode(gold)
    rng = np.random.default_rng(noise_seed)
    noise = rng.normal(0, 1.0, (len(gold_ids) + 64, tokenizer.vocab_size)).astype(np.float32)

    def logits_for(generated, logits):
        out = []
        for g in generated:
            row = noise[len(g)].copy()
            row[gold_ids[len(g)] if len(g) < len(gold_ids) else tokenizer.eos_id] += strength
            out.append(row)
        return logits * 0 + mx.array(np.stack(out))

    return logits_for


class NoisyConstrained:
    """The constraint applied after a noisy model's logits; decoding still sees its ``finalize``."""

    def __init__(self, processor, noisy):
        self.processor, self.noisy = processor, noisy

    def __call__(self, generated, logits):
        return self.processor(generated, self.noisy(generated, logits))

    def finalize(self, ids):
        return self.processor.finalize(ids)


@pytest.mark.parametrize("mode", ["greedy", "beam", "sample"])
def test_noisy_models_only_produce_valid_sql(tokenizer, processor, mode):
    """Under the constraint every finished output is valid; without it, some are not."""
    eos = tokenizer.eos_id
    model = ToyDecoder(vocab_size=tokenizer.vocab_size, d=8, seed=0)
    prompt = tokenizer.encode("how many singers") + [tokenizer.bos_id]
    finished, invalid_free = 0, 0
    for seed, gold in enumerate(QUERIES * 2):
        noisy = _gold_following(tokenizer, gold, seed)
        kw = dict(eos_id=eos, search=Search(mode, beam_size=3, max_new_tokens=64, seed=seed))
        for h in decode(model, prompt, processor=NoisyConstrained(processor, noisy), **kw):
            if h.finished:
                finished += 1
                sql = tokenizer.decode(h.tokens)
                assert schema_violations(sql, SCHEMA) == [], sql
        for h in decode(model, prompt, processor=noisy, **kw):
            invalid_free += bool(h.finished and schema_violations(tokenizer.decode(h.tokens), SCHEMA))
    assert finished >= 4
    assert invalid_free > 0  # the noise is strong enough to matter
