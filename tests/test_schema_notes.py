"""Schema notes: the notes file's checks (file:line errors), where notes come from (the file
beside a database, --notes, SQL comments on SQLite, DuckDB and PostgreSQL), what the model reads
from them (synonyms and value meanings in the linker's features, descriptions in the encoder's
item states, hidden columns gone), that a schema without notes gives exactly what it gave before,
and notes through `vantage generate`, `vantage serve` (its HTTP and OpenAI routes) and evaluation."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import numpy as np
import pytest

from vantage_core.data.example import Example
from vantage_core.data.linking import NAME_EXACT, NAME_NONE, column_values, schema_items
from vantage_core.data.notes import examples_with_notes, notes_beside, read_notes, schema_with_notes, value_meanings
from vantage_core.sql.sqlite_file import schema_from_sqlite, split_comment
from vantage_core.errors import ConfigError
from vantage_plugins.linkers.lexical import link

SHOP_DDL = """
CREATE TABLE Orders ( -- one row per customer order
    OrderID INTEGER PRIMARY KEY,
    ShipCountry TEXT, -- where the order went
    "Ship--Note" TEXT,
    Discontinued INTEGER,
    InternalCode TEXT,
    CustomerID INTEGER REFERENCES Customers(CustomerID)
    -- Discount REAL,  (commented out: not a column)
);
CREATE TABLE Customers (CustomerID INTEGER PRIMARY KEY, Name TEXT, Country TEXT);
INSERT INTO Customers VALUES (1, 'Ann', 'France'), (2, 'Bo', 'Chile');
INSERT INTO Orders VALUES (1, 'France', 'x', 0, 'A1', 1), (2, 'Chile', 'y', 1, 'B2', 2);
"""
NOTES = """\
tables:
  Orders:
    description: the purchases customers made
    synonyms: [purchases, sales]
    columns:
      ShipCountry: {description: country the order was shipped to, synonyms: [destination]}
      Discontinued: {values: {1: discontinued, "0": available}}
      InternalCode: {hide: true}
"""


PLAIN_DDL = "\n".join(split_comment(line)[0] for line in SHOP_DDL.splitlines())  # no SQL comment


def make_shop(folder: Path, notes: str | None = None, ddl: str = SHOP_DDL) -> Path:
    """A real SQLite file ``shop.sqlite`` (with ``shop.notes.yaml`` beside it when ``notes``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "shop.sqlite"
    con = sqlite3.connect(path)
    con.executescript(ddl)
    con.commit()
    con.close()
    if notes is not None:
        (folder / "shop.notes.yaml").write_text(notes)
    return path


@pytest.fixture
def shop(tmp_path) -> Path:
    return make_shop(tmp_path / "db")


def item(items, table, column=None):
    return next(i for i, it in enumerate(items) if it.table == table and it.column == column)


# ---------------------------------------------------------------------------- the file's checks

BAD_NOTES = [
    ("tables:\n  Orders:\n    columns:\n      ShipCountry: {synonym: [x]}\n",
     ":4: tables.Orders.columns.ShipCountry.synonym: unknown field; valid fields: description, synonyms, hide, values"),
    ("tables:\n  Orders:\n    synonyms: sales\n", ":3: tables.Orders.synonyms: expected a list of texts"),
    ("tables:\n  Order:\n    description: x\n",
     ":2: tables.Order: no such table in shop; tables: Orders, Customers"),
    ("tables:\n  Orders:\n    columns:\n      Country: {hide: true}\n",
     ":4: tables.Orders.columns.Country: no such column in Orders; columns: OrderID, ShipCountry, Ship--Note, "
     "Discontinued, InternalCode, CustomerID"),
    ("tables:\n  Orders:\n    columns:\n      InternalCode: {hide: yes please}\n",
     ":4: tables.Orders.columns.InternalCode.hide: expected true or false"),
    ("tables:\n  Orders:\n    columns:\n      Discontinued:\n        values: {1: [a, b]}\n",
     ":5: tables.Orders.columns.Discontinued.values.1: give a mapping of stored value to what it means"),
    ("tables:\n  Orders:\n    description: [x\n", ":4:1: YAML syntax error"),
    ("tables:\n  Orders: {}\n  orders: {}\n", ":3: tables.orders: 'Orders' is given twice"),
    ("orders: {}\n", ":1: orders: unknown field; valid fields: tables"),
    ("- Orders\n", ":1: the notes must be a mapping with the key 'tables', not a list"),
    ("tables: !!python/object:os.system {}\n", ":1: tables: the YAML tag !!python/object:os.system is not allowed"),
]


@pytest.mark.parametrize("text, expected", BAD_NOTES)
def test_a_mistake_in_the_notes_is_one_error_naming_file_line_field_and_what_is_valid(shop, text, expected):
    notes = shop.with_name("bad.notes.yaml")
    notes.write_text(text)
    with pytest.raises(ConfigError) as exc:
        read_notes(notes, schema_from_sqlite(shop))
    message = str(exc.value)
    assert message.startswith(f"{notes}{expected}") and "\n" not in message, message


def test_notes_that_are_not_utf8_name_the_line_and_column(shop):
    notes = shop.with_name("shop.notes.yaml")
    notes.write_bytes(b"tables:\n  Orders:\n    description: caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{notes}:3:21: not valid UTF-8 \(byte 0xe9\)"):
        read_notes(notes, schema_from_sqlite(shop))


def test_generate_refuses_broken_notes_before_answering(shop, capsys):
    """`vantage generate` with a notes file naming a missing table: exit 2, one error line, no SQL printed."""
    from test_cli_errors import assert_one_error_line, run_cli

    from infer_fixture import make_model_dir

    model = make_model_dir(shop.parent.parent / "model")
    shop.with_name("shop.notes.yaml").write_text("tables:\n  Shipments: {description: x}\n")
    code, out, err = run_cli(["generate", "-m", str(model), "--db", str(shop), "how many orders?"], capsys)
    assert code == 2 and out == ""
    assert_one_error_line(err, f"{shop.with_name('shop.notes.yaml')}:2: tables.Shipments: no such table in shop")


# ---------------------------------------------------------------------------- where notes come from

def test_the_notes_file_beside_a_database_is_found_by_its_name(tmp_path):
    path = make_shop(tmp_path / "a", NOTES)
    assert notes_beside(path) == path.with_name("shop.notes.yaml")
    assert notes_beside(f"sqlite:///{path}") == path.with_name("shop.notes.yaml")
    assert notes_beside(f"duckdb:///{path.with_name('shop.duckdb')}") == path.with_name("shop.notes.yaml")
    assert notes_beside(make_shop(tmp_path / "b")) is None
    assert notes_beside("postgresql://me@localhost/shop") is None
    schema = schema_from_sqlite(path)
    noted = schema_with_notes(schema, path)
    assert noted.table("Orders").description == "the purchases customers made"
    assert schema_with_notes(schema, make_shop(tmp_path / "c")) is schema


def test_sqlite_comments_describe_tables_and_columns(shop):
    schema = schema_from_sqlite(shop)
    orders = schema.table("Orders")
    assert orders.description == "one row per customer order"
    about = {c.name: c.description for c in orders.columns}
    assert about == {"OrderID": None, "ShipCountry": "where the order went", "Ship--Note": None,
                     "Discontinued": None, "InternalCode": None, "CustomerID": None}
    assert schema.table("Customers").description is None


def test_the_notes_file_wins_over_sql_comments(tmp_path):
    path = make_shop(tmp_path, NOTES)
    orders = schema_with_notes(schema_from_sqlite(path), path).table("Orders")
    assert orders.description == "the purchases customers made"  # the file's, not the comment's
    by_name = {c.name: c for c in orders.columns}
    assert by_name["ShipCountry"].description == "country the order was shipped to"
    assert by_name["Discontinued"].values == {"1": "discontinued", "0": "available"}


def test_duckdb_comment_on_describes_tables_and_columns(tmp_path):
    import duckdb

    from vantage_core.sql.database import open_database

    path = tmp_path / "shop.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, ship_country VARCHAR)")
    con.execute("COMMENT ON TABLE orders IS 'one row per customer order'")
    con.execute("COMMENT ON COLUMN orders.ship_country IS 'where the order went'")
    con.close()
    schema = open_database(f"duckdb:///{path}").schema()
    orders = schema.table("orders")
    assert orders.description == "one row per customer order"
    assert [(c.name, c.description) for c in orders.columns] == [("id", None), ("ship_country", "where the order went")]


def test_postgresql_comment_on_describes_tables_and_columns(postgres_server):
    import psycopg

    from conftest import with_database
    from vantage_core.sql.database import allow_privileged, close_all, open_database

    name = f"vt_notes_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = with_database(postgres_server, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, ship_country TEXT)")
            conn.execute("COMMENT ON TABLE orders IS 'one row per customer order'")
            conn.execute("COMMENT ON COLUMN orders.ship_country IS 'where the order went'")
        allow_privileged()  # the test's superuser reads the schema; no model SQL runs here
        try:
            orders = open_database(url).schema().table("orders")
        finally:
            allow_privileged(False)
        assert orders.description == "one row per customer order"
        assert [(c.name, c.description) for c in orders.columns] == [("id", None),
                                                                     ("ship_country", "where the order went")]
    finally:
        close_all()
        with psycopg.connect(postgres_server, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------- what the model reads

def test_synonyms_link_question_words_to_the_item(tmp_path):
    path = make_shop(tmp_path, NOTES)
    plain = schema_from_sqlite(path)
    noted = schema_with_notes(plain, path)
    words = "how many sales went to each destination ?".split()
    before, after = (link(words, schema_items(s)) for s in (plain, noted))
    items = schema_items(noted)
    orders, ship = item(items, "Orders"), item(items, "Orders", "ShipCountry")
    assert (before.item_name[orders], before.item_name[ship]) == (NAME_NONE, NAME_NONE)
    assert (after.item_name[orders], after.item_name[ship]) == (NAME_EXACT, NAME_EXACT)
    assert after.word_table[words.index("sales")] == NAME_EXACT
    assert after.word_column[words.index("destination")] == NAME_EXACT


def test_value_meanings_link_to_the_column_and_write_the_stored_value(tmp_path):
    path = make_shop(tmp_path, NOTES)
    plain = schema_from_sqlite(path)
    noted = schema_with_notes(plain, path)
    words = "how many discontinued orders ?".split()
    col = item(schema_items(noted), "Orders", "Discontinued")
    assert link(words, schema_items(plain), column_values(path, plain)).item_value[col] == 0
    linked = link(words, schema_items(noted), column_values(path, noted))
    assert linked.item_value[col] == 1 and linked.word_value[words.index("discontinued")] == 1
    assert value_meanings(noted) == {"discontinued": "1", "available": "0"}


def test_hidden_columns_are_gone_from_the_schema_the_model_sees(tmp_path):
    path = make_shop(tmp_path, NOTES + "  Customers:\n    columns:\n      CustomerID: {hide: true}\n")
    noted = schema_with_notes(schema_from_sqlite(path), path)
    names = {(it.table, it.column) for it in schema_items(noted)}
    assert ("Orders", "InternalCode") not in names and ("Orders", "ShipCountry") in names
    assert ("Customers", "CustomerID") not in names
    assert noted.foreign_keys == [] and noted.table("Customers").primary_keys == []


def test_without_notes_features_and_cache_keys_are_as_before(tmp_path):
    """A schema without notes, and one through an empty notes file, give the features, batch and
    schema dict a schema gave before notes existed (no new keys; hence the same caches)."""
    from vantage_core.data.actions import collate, featurize

    path = make_shop(tmp_path, "tables: {}\n", PLAIN_DDL)
    plain = schema_from_sqlite(path)
    emptied = schema_with_notes(plain, path)
    assert emptied is not plain and emptied.to_dict() == plain.to_dict()
    for table in plain.to_dict()["tables"]:
        assert set(table) == {"name", "columns", "natural_name", "primary_keys"}
        assert all(set(c) == {"name", "type", "natural_name"} for c in table["columns"])
    tok = _pieces_tokenizer()
    linker = _lexical()
    feats = [featurize(Example("how many orders went to France ?", "", "shop", s, [str(path)]), tok, linker,
                       column_values(path, s)) for s in (plain, emptied)]
    assert feats[0] == feats[1] and "item_descs" not in feats[0]
    batch = collate(feats, [Example("q", "", "shop", plain, [])] * 2, None, with_targets=False)
    assert "item_descs" not in batch and "table_descs" not in batch


def test_descriptions_are_mixed_into_the_item_states(tmp_path):
    """The encoder's item state of a described column is (1 - w) name + w description; the other
    items, and every item of a schema without descriptions, keep their name's state."""
    from vantage_core.data.actions import collate, featurize

    path = make_shop(tmp_path, NOTES)
    noted = schema_with_notes(schema_from_sqlite(path), path)
    encoder = _linked_encoder()
    ex = Example("how many orders ?", "", "shop", noted, [str(path)])
    f = featurize(ex, encoder.question_tokenizer, _lexical(), None)
    batch = collate([f], [ex], None, with_targets=False)
    inputs = encoder.inputs(batch)
    items = schema_items(noted)
    pooled = encoder.frozen.pooled
    ship, name = item(items, "Orders", "ShipCountry"), item(items, "Customers", "Name")
    got = np.array(inputs["item_vec"][0])
    want = 0.5 * pooled[items[ship].text].astype(np.float32) + 0.5 * pooled["country the order was shipped to"]
    assert np.allclose(got[ship], want, atol=1e-3)
    assert np.allclose(got[name], pooled[items[name].text].astype(np.float32), atol=1e-6)
    table = np.array(inputs["item_table_vec"][0])[ship]  # the column's table: the Orders table, described
    assert np.allclose(table, 0.5 * pooled["orders"].astype(np.float32) + 0.5 * pooled["the purchases customers made"],
                       atol=1e-3)


def _pieces_tokenizer():
    return _linked_encoder().question_tokenizer


def _lexical():
    from vantage_core.plugins import registry

    return registry().build("schema_linker", "lexical")


_ENCODER = []


def _linked_encoder():
    """The ``linked`` encoder (frozen MiniLM, states cached in memory only)."""
    if not _ENCODER:
        from vantage_plugins.schema_encoders.linked import LinkedSchemaEncoder

        _ENCODER.append(LinkedSchemaEncoder(32, n_layers=1, n_heads=2, hidden=32, dropout=0.0, cache_dir=None))
        _ENCODER[0].frozen.cache_dir = None
    return _ENCODER[0]


# ---------------------------------------------------------------------------- every command

def test_generate_with_notes_hides_columns_and_answers(tmp_path):
    """`vantage generate --notes FILE` on a pointer model: the SQL comes back, and the engine's
    schema for that database has the notes (a hidden column is gone); the same without notes
    gives the schema as the database has it."""
    from click.testing import CliRunner

    from infer_fixture import make_pointer_model_dir
    from vantage_core.cli import cli
    from vantage_core.inference.engine import Engine

    path = make_shop(tmp_path / "db")
    notes = tmp_path / "my-notes.yaml"
    notes.write_text(NOTES)
    model = make_pointer_model_dir(tmp_path / "model")
    res = CliRunner().invoke(cli, ["generate", "-m", str(model), "--db", str(path), "--notes", str(notes),
                                   "--json", "how many discontinued sales?"])
    assert res.exit_code == 0, res.output
    assert '"sql": "' in res.output.splitlines()[0]
    engine = Engine.load(model)
    assert "InternalCode" in {c.name for c in engine.schema_of(path).table("Orders").columns}
    engine.notes_files[str(path)] = str(notes)
    assert "InternalCode" not in {c.name for c in engine.schema_of(path).table("Orders").columns}
    assert engine.generate("how many discontinued sales?", db_path=path).sql


def test_without_notes_the_engine_writes_the_same_sql(tmp_path):
    """A database with an empty notes file beside it gets the SQL, candidates and scores it gets
    with no notes file."""
    from infer_fixture import make_pointer_model_dir
    from vantage_core.inference.engine import Engine

    plain, emptied = make_shop(tmp_path / "a", ddl=PLAIN_DDL), make_shop(tmp_path / "b", "tables: {}\n", PLAIN_DDL)
    engine = Engine.load(make_pointer_model_dir(tmp_path / "model", seed=1))
    for question in ("how many orders went to France?", "names of customers from Chile"):
        got = [engine.generate(question, db_path=db, decoding="beam", beam_size=3) for db in (plain, emptied)]
        assert [(c.sql, c.logprob) for c in got[0].candidates] == [(c.sql, c.logprob) for c in got[1].candidates]


def test_serve_reads_the_notes_beside_each_database(tmp_path):
    """`vantage serve` over a folder: the schema route shows the notes (no hidden column), and
    /v1/generate and the OpenAI route answer over the noted database on a real server; a broken
    notes file stops the app before it serves, naming the file and line."""
    import openai

    from infer_fixture import make_pointer_model_dir
    from test_serve_api import LoopbackServer
    from vantage_core.inference.engine import Engine
    from vantage_core.inference.serve import ServeSettings, create_app

    make_shop(tmp_path / "dbs" / "shop", NOTES)
    engine = Engine.load(make_pointer_model_dir(tmp_path / "model"))
    app = create_app(engine, ServeSettings(db_dirs=[str(tmp_path / "dbs")]))
    with LoopbackServer(app) as http:
        schema = http.get("/v1/databases/shop/schema").json()
        orders = next(t for t in schema["tables"] if t["name"] == "Orders")
        assert orders["description"] == "the purchases customers made"
        assert "InternalCode" not in [c["name"] for c in orders["columns"]]
        r = http.post("/v1/generate", json={"question": "how many sales?", "db_id": "shop"})
        assert r.status_code == 200 and r.json()["sql"], r.text
        client = openai.OpenAI(base_url=f"{http.base_url}/v1", api_key="unused", max_retries=0, timeout=60)
        chat = client.chat.completions.create(model=engine.config.run.name, extra_body={"database": "shop"},
                                              messages=[{"role": "user", "content": "how many sales?"}])
        assert chat.choices[0].message.content == r.json()["sql"]
    (tmp_path / "dbs" / "shop" / "shop.notes.yaml").write_text("tables:\n  Orders: {hide: maybe}\n")
    with pytest.raises(ConfigError, match=r"shop\.notes\.yaml:2: tables\.Orders\.hide: expected true or false"):
        create_app(Engine.load(tmp_path / "model"), ServeSettings(db_dirs=[str(tmp_path / "dbs")]))


def test_evaluation_applies_each_databases_notes(tmp_path):
    a, b = make_shop(tmp_path / "a", NOTES), make_shop(tmp_path / "b")
    schema = schema_from_sqlite(a)
    examples = [Example("q", "SELECT 1", "shop", schema, [str(a)]), Example("q", "SELECT 1", "other", schema, [str(b)])]
    noted, used = examples_with_notes(examples)
    assert used == {"shop": a.with_name("shop.notes.yaml")}
    assert noted[0].schema.table("Orders").synonyms == ["purchases", "sales"] and noted[1] is examples[1]
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "other.yaml").write_text("tables:\n  Customers: {description: people who buy}\n")
    noted, used = examples_with_notes(examples, str(tmp_path / "notes" / "{db_id}.yaml"), beside=False)
    assert noted[0] is examples[0] and noted[1].schema.table("Customers").description == "people who buy"
    with pytest.raises(ConfigError, match=r"write \{db_id\}"):
        examples_with_notes(examples, str(tmp_path / "notes" / "other.yaml"))


def test_the_outside_sets_notes_load_and_change_only_with_the_parameter(tmp_path):
    from vantage_plugins.datasets.outside import OutsideDataset

    plain = OutsideDataset(out_dir=str(tmp_path)).load("test")
    noted = OutsideDataset(out_dir=str(tmp_path), notes=True).load("test")
    assert len(plain.examples) == len(noted.examples) == 97 and not noted.skipped
    described = [t for ex in noted.examples[:1] for t in ex.schema.tables if t.description]
    assert described and not any(t.description for ex in plain.examples for t in ex.schema.tables)
    assert [ex.question for ex in plain.examples] == [ex.question for ex in noted.examples]
