"""Schema linkers as plugins: the built-ins, a third-party linker found by name, the recipe's
``data.linker`` and its errors."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vantage_core import hookimpl
from vantage_core.data.linking import Links, column_values, schema_items
from vantage_core.errors import ConfigError, PluginError
from vantage_core.plugins import Registry, registry
from vantage_plugins.linkers.lexical import link

from test_spider_recipe import toy_db, toy_schema  # noqa: F401  (toy_db is a fixture)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

QUESTIONS = ["How many singers from France sang in concerts , by singer id ?".split(),
             "Which country is Rose White from ?".split(), [], ["hello"]]


def test_builtin_linkers_are_registered():
    assert {"lexical", "none"} <= set(registry().names("schema_linker"))
    assert sorted(registry().get("schema_linker", "lexical").parameters()) == ["cell_values", "max_ngram"]


@pytest.mark.parametrize("max_ngram", [4, 1])
def test_lexical_equals_link(toy_db, max_ngram):  # noqa: F811
    schema = toy_schema()
    items, values = schema_items(schema), column_values(toy_db, schema)
    linker = registry().build("schema_linker", "lexical", max_ngram=max_ngram)
    assert linker.uses_values
    for words in QUESTIONS:
        assert linker.link(words, items, values) == link(words, items, values, max_ngram=max_ngram)
    # the toy questions do exercise value matches, so the comparison above covers them
    assert any(linker.link(QUESTIONS[0], items, values).item_value)


def test_lexical_without_cell_values_ignores_values(toy_db):  # noqa: F811
    schema = toy_schema()
    items, values = schema_items(schema), column_values(toy_db, schema)
    linker = registry().build("schema_linker", "lexical", cell_values=False)
    assert not linker.uses_values
    got = linker.link(QUESTIONS[0], items, values)
    assert got == link(QUESTIONS[0], items, None)
    assert not any(got.item_value) and any(got.item_name)


def test_none_linker_gives_zeros_of_the_right_lengths(toy_db):  # noqa: F811
    schema = toy_schema()
    items = schema_items(schema)
    linker = registry().build("schema_linker", "none")
    assert linker.uses_values is False
    words = QUESTIONS[0]
    got = linker.link(words, items, None)
    assert got == Links([0] * len(items), [0] * len(items), [0] * len(words), [0] * len(words), [0] * len(words))


class FirstWordLinker:
    """Marks the first question word as an exact table match (a test linker)."""

    uses_values = False

    def __init__(self, strength: int = 2):
        self.strength = strength

    def link(self, question_words, items, values=None):
        n, q = len(items), len(question_words)
        return Links([0] * n, [0] * n, [self.strength] + [0] * (q - 1), [0] * q, [0] * q)


class ThirdPartyLinkers:
    @hookimpl
    def register_schema_linkers(self, register):
        register("first_word", FirstWordLinker)


def test_third_party_linker_is_found_by_name(fresh_pm):
    fresh_pm.register(ThirdPartyLinkers(), name="third")
    reg = Registry(fresh_pm)
    assert reg.names("schema_linker") == ["first_word"]
    entry = reg.get("schema_linker", "first_word")
    assert entry.distribution.startswith("(registered directly") and sorted(entry.parameters()) == ["strength"]
    assert reg.build("schema_linker", "first_word", strength=1).link(["a", "b"], [], None).word_table == [1, 0]
    with pytest.raises(PluginError, match=r"unknown schema_linker 'lexcal'; registered: first_word"):
        reg.get("schema_linker", "lexcal")


def test_recipe_builds_the_configured_linker(tmp_path):
    from spider_recipe import load_config, make_linker

    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"))
    assert cfg.data.linker.name == "lexical" and cfg.data.linker.params == {"cell_values": True}
    assert make_linker(cfg).uses_values
    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"), ["data.linker={name: none}"])
    assert type(make_linker(cfg)).__name__ == "NoLinker" and not make_linker(cfg).uses_values
    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"), ["data.linker.params.cell_values=false"])
    assert not make_linker(cfg).uses_values


def test_recipe_rejects_unknown_linker_and_old_key(tmp_path):
    from spider_recipe import load_config

    with pytest.raises(ConfigError, match=r"data\.linker: unknown schema_linker 'lexcal'; registered: .*lexical.*none"):
        load_config(str(REPO / "configs" / "spider_cpu.yaml"), ["data.linker.name=lexcal"])
    with pytest.raises(ConfigError, match=r"schema_linker 'lexical' takes no parameter 'ngrams'; it accepts: cell_values, max_ngram"):
        load_config(str(REPO / "configs" / "spider_cpu.yaml"), ["data.linker.params.ngrams=3"])
    old = tmp_path / "old.yaml"
    old.write_text("data: {cell_values: false}\n")
    with pytest.raises(ConfigError, match=r"data\.cell_values .*data\.linker: \{name: lexical, params: \{cell_values: false\}\}"):
        load_config(str(old))


def test_recipe_refuses_a_cache_prepared_with_another_linker(tmp_path):
    """Features cached by `prepare` belong to its linker: another linker's config must not reuse them."""
    import pickle

    from spider_recipe import load_cache, load_config

    cfg = load_config(str(REPO / "configs" / "spider_cpu.yaml"), [f"dir={tmp_path}"])
    with open(tmp_path / "cache.pkl", "wb") as fh:
        pickle.dump({"itos": [], "splits": {}, "data": cfg.data.model_dump()}, fh)
    assert load_cache(cfg)["data"]["linker"]["name"] == "lexical"
    other = load_config(str(REPO / "configs" / "spider_cpu.yaml"), [f"dir={tmp_path}", "data.linker={name: none}"])
    with pytest.raises(ConfigError, match=r"data.linker: .*'lexical'.* in the cache.*'none'.*prepare --force"):
        load_cache(other)
