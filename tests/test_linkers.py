"""Schema linkers as plugins: the built-ins, a third-party linker found by name, the recipe's
``data.linker`` and its errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from vantage_core import hookimpl
from vantage_core.data.linking import Links, column_values, schema_items
from vantage_core.errors import ConfigError, PluginError
from vantage_core.plugins import Registry, registry
from vantage_plugins.linkers.lexical import link

from test_sql_actions import toy_db, toy_schema  # noqa: F401  (toy_db is a fixture)

REPO = Path(__file__).resolve().parents[1]

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


def test_config_builds_the_configured_linker():
    from vantage_core.config import load_config, plugin_params
    from vantage_core.plugins import registry

    def linker(*sets):
        spec = load_config(REPO / "configs" / "spider.yaml", list(sets)).data.linker
        return spec, registry().build("schema_linker", spec.name, **plugin_params(spec))

    spec, built = linker()
    assert spec.name == "lexical" and spec.params == {"cell_values": True} and built.uses_values
    spec, built = linker("data.linker={name: none}")
    assert type(built).__name__ == "NoLinker" and not built.uses_values
    assert not linker("data.linker.cell_values=false")[1].uses_values


def test_config_rejects_an_unknown_linker_or_parameter():
    from vantage_core.config import load_config

    with pytest.raises(ConfigError, match=r"data\.linker\.name: unknown schema_linker 'lexcal'; registered: .*lexical.*none"):
        load_config(REPO / "configs" / "spider.yaml", ["data.linker.name=lexcal"])
    with pytest.raises(ConfigError, match=r"schema_linker 'lexical' takes no parameter 'ngrams'; it accepts: cell_values, max_ngram"):
        load_config(REPO / "configs" / "spider.yaml", ["data.linker.ngrams=3"])
    with pytest.raises(ConfigError, match=r"data\.linker: data\.target: actions needs a schema_linker"):
        load_config(REPO / "configs" / "spider.yaml", ["data.linker=null"])


def test_featurized_cache_belongs_to_its_linker(tmp_path, monkeypatch):
    """Features are cached by content, the linker included: another linker never reads them."""
    from vantage_core.config import load_config
    from vantage_core.data.targets import ActionTarget, target_format
    from vantage_core.plugins import registry

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path))
    sets = ["data.train=[{name: synthetic, n_databases: 3, examples_per_db: 2}]", "data.validation=[]"]
    cfg = load_config(REPO / "configs" / "spider.yaml", sets)
    qtok = ActionTarget.question_tokenizer(cfg, registry())
    first = target_format(cfg.data).prepare("train", qtok, progress=False)
    again = target_format(cfg.data).prepare("train", qtok, progress=False)
    other = target_format(load_config(REPO / "configs" / "spider.yaml", sets + ["data.linker={name: none}"]).data) \
        .prepare("train", qtok, progress=False)
    assert not first.from_cache and again.from_cache and again.feats == first.feats
    assert not other.from_cache and other.cache_file != first.cache_file
    assert any(f["item_link_name"] != [0] * len(f["item_link_name"]) for f in first.feats)
    assert all(set(f["item_link_name"]) == {0} for f in other.feats)
