"""The robustness evaluation sets: Spider's held-out questions rewritten (``perturb: synonyms |
values``) and the ``outside`` dataset of questions over public-domain databases."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from click.testing import CliRunner

from vantage_core.sql.schema import Column, Schema, Table
from vantage_core.errors import DataError
from vantage_plugins.datasets import outside
from vantage_plugins.datasets.perturb import (SynonymTable, Term, load_synonym_tables, number_forms,
                                              plural_of, singular_of)
from vantage_plugins.datasets.spider import SpiderDataset


def _table(phrase: str, *synonyms: str) -> SynonymTable:
    singular, plural = number_forms(phrase)
    return SynonymTable([Term(singular, plural, tuple(number_forms(s) for s in synonyms))])


# ------------------------------------------------------------------------- rewriting, no data

def test_plural_and_singular_forms():
    """Plurals by rule and by the irregular list, and back."""
    assert [plural_of(w) for w in ("bank branch", "city", "person", "day", "status")] == \
        ["bank branches", "cities", "people", "days", "statuses"]
    assert [singular_of(w) for w in ("bank branches", "cities", "people", "days", "status")] == \
        ["bank branch", "city", "person", "day", "status"]


def test_a_mention_is_replaced_in_its_number_and_case():
    """Singular stays singular, plural takes the synonym's plural, a capital stays a capital."""
    table = _table("singer", "vocalist")
    assert table.rewrite("Singers and the singer's age") == "Vocalists and the vocalist's age"


def test_quotes_idioms_values_and_proper_names_are_left_alone():
    """Quoted text, "descending order", the SQL's values and capitalized names keep their words."""
    table = _table("order", "purchase")
    assert table.rewrite('Show orders in descending order of "order" date') == \
        'Show purchases in descending order of "order" date'
    city = _table("city", "town")
    assert city.rewrite("banks in New York City and their city") == "banks in New York City and their town"
    assert city.rewrite("who lives in new york city", ("new york city",)) == "who lives in new york city"


def test_the_article_follows_the_new_word():
    """"a" becomes "an" before a vowel (and back)."""
    assert _table("building", "office").rewrite("Is there a building?") == "Is there an office?"
    assert _table("activity", "pastime").rewrite("Join an activity") == "Join a pastime"


def test_the_synonym_is_the_same_for_the_same_question():
    """The choice is seeded by the question: the same text always gives the same rewrite."""
    table = _table("song", "track", "tune")
    first = [table.rewrite(f"How many songs are there in album {i}?") for i in range(20)]
    assert first == [table.rewrite(f"How many songs are there in album {i}?") for i in range(20)]
    assert {re.search(r"many (\w+)", q).group(1) for q in first} == {"tracks", "tunes"}


def _schema() -> Schema:
    return Schema("shop", [Table("Products", [Column("Price", "number", "price")], natural_name="products")])


@pytest.mark.parametrize("text, message", [
    ("shop:\n  Goods:\n    product: [item]\n", "shop.Goods: no table 'Goods' in database shop; tables: Products"),
    ("shop:\n  Products:\n    colour: [shade]\n", "shop.Products.colour: no word of the phrase is in the natural names"),
    ("shop:\n  Products:\n    price: []\n", "shop.Products.price: expected a list of 1 to 3 synonyms"),
    ("shop:\n  Products:\n    price: [price]\n", "shop.Products.price: a synonym repeats the phrase 'price'"),
    ("mall:\n  Products:\n    price: [cost]\n", "mall: no such database in the release"),
])
def test_a_bad_synonym_table_is_one_error_naming_the_entry(tmp_path, text, message):
    """Each mistake in the synonym file names the file, the database, table and phrase, and what is valid."""
    path = tmp_path / "synonyms.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        load_synonym_tables({"shop": _schema()}, path)
    assert str(err.value).startswith("synonyms.yaml: ") and message in str(err.value)


def test_a_bad_perturb_value_names_the_valid_ones(shared_data):
    """`perturb` takes none, synonyms or values; anything else is one error that lists them."""
    with pytest.raises(DataError, match=r"spider: perturb must be one of none, synonyms, values; got 'synonym'"):
        SpiderDataset(path=str(shared_data / "spider"), perturb="synonym")


# ------------------------------------------------------------------------- the real held-out split

@pytest.fixture(scope="module")
def spider_folder():
    """``../shared/data/spider``; the test skips with a message where it is absent."""
    from conftest import shared_data_dir

    folder = shared_data_dir() / "spider"
    if not (folder / "train_spider.json").exists():
        pytest.skip(f"real Spider data not found at {folder.parent} (set VANTAGE_SHARED_DATA to its folder)")
    return folder


@pytest.fixture(scope="module")
def spider_loads(spider_folder):
    """The unperturbed and both perturbed validation splits, loaded once."""
    return {mode: SpiderDataset(path=str(spider_folder), perturb=mode).load("validation")
            for mode in ("none", "synonyms", "values")}


@pytest.mark.data
def test_synonyms_cover_every_held_out_database(spider_folder):
    """The synonym table has an entry for each of the 21 held-out databases, and nothing else."""
    ds = SpiderDataset(path=str(spider_folder))
    assert set(load_synonym_tables(ds.release.schemas)) == ds.held_out_databases()
    assert len(ds.held_out_databases()) == 21


@pytest.mark.data
@pytest.mark.parametrize("mode", ["synonyms", "values"])
def test_perturbed_split_keeps_gold_and_counts_its_rewrites(spider_loads, mode):
    """Same examples, same gold SQL, same order; each records whether it changed and the
    original; the load report's line gives the count of rewritten questions."""
    plain, changed = spider_loads["none"].examples, spider_loads[mode].examples
    assert len(changed) == len(plain) == 1092
    assert [e.sql for e in changed] == [e.sql for e in plain] and [e.id for e in changed] == [e.id for e in plain]
    assert [e.extras["original_question"] for e in changed] == [e.question for e in plain]
    flags = [e.extras["perturbed"] for e in changed]
    assert flags == [a.question != b.question for a, b in zip(plain, changed)]
    summary = spider_loads[mode].summary("spider", "validation")
    assert summary.endswith(f"; perturb {mode} rewrote {sum(flags)} of 1092 questions")
    assert "perturb" not in spider_loads["none"].summary("spider", "validation")


@pytest.mark.data
def test_synonyms_rewrite_a_known_question(spider_loads):
    """"How many farms are there?" names the farm table by one of its hand-written synonyms."""
    index = next(i for i, e in enumerate(spider_loads["none"].examples) if e.question.strip() == "How many farms are there?")
    rewritten = spider_loads["synonyms"].examples[index]
    assert rewritten.question in {"How many ranches are there?", "How many homesteads are there?"}
    assert rewritten.sql == spider_loads["none"].examples[index].sql


@pytest.mark.data
def test_values_drop_a_known_column_mention(spider_loads):
    """"banks in the state of New York" -> "banks in New York"; a question no pattern fits stays."""
    by_question = {e.extras["original_question"]: e for e in spider_loads["values"].examples}
    assert by_question["What are the names of banks in the state of New York?"].question == \
        "What are the names of banks in New York?"
    assert by_question["How many farms are there?"].question == "How many farms are there?"
    assert by_question["How many farms are there?"].extras["perturbed"] is False


@pytest.mark.data
def test_training_questions_are_never_perturbed(shared_data):
    """`perturb` leaves the train split as it is."""
    folder = str(shared_data / "spider")
    plain = SpiderDataset(path=folder).load("train").examples
    perturbed = SpiderDataset(path=folder, perturb="synonyms").load("train").examples
    assert [e.question for e in perturbed] == [e.question for e in plain]
    assert not any("perturbed" in e.extras for e in perturbed)


@pytest.mark.data
def test_evaluate_takes_the_option_and_a_bad_value_is_one_error(shared_data, tmp_path, capsys):
    """`vantage evaluate --dataset-param perturb=values` scores the rewritten split (its gold as the
    predictions: 100%); `perturb=bogus` is one error line that lists the valid values."""
    from vantage_core.cli import cli, main

    gold = tmp_path / "gold.sql"
    examples = SpiderDataset(path=str(shared_data / "spider")).load("validation").examples[:5]
    gold.write_text("".join(e.sql + "\n" for e in examples))
    base = ["evaluate", "--predictions", str(gold), "--dataset", "spider", "--split", "validation",
            "--dataset-param", f"path={shared_data / 'spider'}", "--limit", "5", "-m", "execution", "-j", "1"]
    result = CliRunner().invoke(cli, base + ["--dataset-param", "perturb=values", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "perturb values rewrote" in result.output and "execution: 100.00 (n=5)" in result.output
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(base + ["--dataset-param", "perturb=bogus"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == \
        ["error: spider: perturb must be one of none, synonyms, values; got 'bogus'"]


# ------------------------------------------------------------------------- outside Spider

@pytest.fixture(scope="module")
def outside_report(tmp_path_factory):
    return outside.OutsideDataset(out_dir=str(tmp_path_factory.mktemp("outside"))).load("test")


def test_outside_every_gold_query_runs_and_returns_rows(outside_report):
    """All the hand-written questions load: none is skipped for a failing or empty gold query."""
    assert outside_report.skipped == {}, outside_report.details
    assert len(outside_report.examples) >= 80
    counts = {db: sum(e.db_id == db for e in outside_report.examples) for db in outside.DATABASES}
    assert sorted(counts) == ["seattle_weather", "us_airports", "us_economy"] and min(counts.values()) >= 25
    for ex in outside_report.examples:
        conn = sqlite3.connect(f"file:{ex.db_paths[0]}?mode=ro", uri=True)
        assert conn.execute(ex.sql).fetchmany(1), ex.question
        conn.close()


def test_outside_databases_use_real_world_names_and_keys(outside_report):
    """Spaces, CamelCase and one wide table; the airports' state is a foreign key to the states."""
    schemas = {e.db_id: e.schema for e in outside_report.examples}
    names = {t.name for s in schemas.values() for t in s.tables}
    assert {"US States", "Employment by Sector", "DailyWeather", "IowaNetGeneration"} <= names
    assert len(schemas["us_economy"].table("Employment by Sector").columns) == 24
    fks = [(f.table, f.column, f.ref_table, f.ref_column) for f in schemas["us_airports"].foreign_keys]
    assert fks == [("Airports", "StateCode", "US States", "State Code")]
    assert schemas["us_airports"].table("Airports").primary_keys == ["IATA"]


def test_outside_skips_a_failing_or_empty_gold_query_with_its_reason(tmp_path, monkeypatch):
    """A gold query that fails or returns nothing is skipped and named, never scored."""
    questions = tmp_path / "questions.yaml"
    questions.write_text(json.dumps([
        {"db": "seattle_weather", "question": "ok", "sql": "SELECT count(*) FROM DailyWeather"},
        {"db": "seattle_weather", "question": "typo", "sql": "SELECT Rainfall FROM DailyWeather"},
        {"db": "seattle_weather", "question": "empty", "sql": "SELECT ObsDate FROM DailyWeather WHERE MaxTempC > 99"},
        {"db": "nowhere", "question": "?", "sql": "SELECT 1"}]))
    monkeypatch.setattr(outside, "QUESTIONS_FILE", questions)
    report = outside.OutsideDataset(out_dir=str(tmp_path / "dbs")).load("test")
    assert [e.question for e in report.examples] == ["ok"]
    assert report.skipped == {"gold SQL fails": 1, "gold SQL returns no rows": 1, "unknown database": 1}
    assert any("item 1: gold SQL fails: no such column: Rainfall" in d for d in report.details)


def test_outside_evaluate_scores_its_gold_at_100(tmp_path, monkeypatch):
    """`vantage evaluate --dataset outside --split test` with the gold queries as predictions."""
    from vantage_core.cli import cli

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    report = outside.OutsideDataset().load("test")
    gold = tmp_path / "gold.sql"
    gold.write_text("".join(e.sql + "\n" for e in report.examples))
    result = CliRunner().invoke(cli, ["evaluate", "--predictions", str(gold), "--dataset", "outside", "--split", "test",
                                      "-m", "execution", "-j", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"execution: 100.00 (n={len(report.examples)})" in result.output
    with pytest.raises(DataError, match="outside has no split 'dev'; splits: test"):
        outside.OutsideDataset(out_dir=str(tmp_path / "dbs")).load("dev")


def test_evaluate_adds_dataset_params_to_the_runs_own(tmp_path, monkeypatch):
    """With --checkpoint, --dataset-param is added to the parameters the run's config gave the
    dataset instead of replacing them (here the run's 6 databases stay, so its test split has 3
    questions, not the 360 of the default 40 databases)."""
    import yaml

    from infer_fixture import make_model_dir
    from vantage_core.cli import cli

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    model_dir = make_model_dir(tmp_path / "model")
    config = yaml.safe_load((model_dir / "config.yaml").read_text())
    config["data"]["test"] = [{"name": "synthetic", "n_databases": 6, "examples_per_db": 3,
                               "out_dir": str(tmp_path / "dbs")}]
    (model_dir / "config.yaml").write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(model_dir), "--dataset", "synthetic",
                                      "--split", "test", "--dataset-param", "seed=0", "--limit", "1",
                                      "-m", "valid_sql", "-j", "1", "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "synthetic/test: 3 loaded of 3" in result.output
