"""Tiny untrained model folders (as a checkpoint holds them: a token model and a pointer model),
SQLite databases (one whose cells are binary or infinite) and an engine answering a known query,
for the inference, serving and export tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

import vantage_core  # noqa: F401
import mlx.core as mx
from mlx.utils import tree_flatten

from vantage_core.config import dump_config, load_config

TINY_MODEL = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 256, "num_experts": 4,
              "expert_hidden": 32, "cross_attention_every": 2,
              "router": {"name": "topk", "k": 2},
              "schema_encoder": {"name": "transformer", "dim": 32, "n_layers": 1, "n_heads": 2}},
    "data": {"serialization": {"max_schema_tokens": 96, "max_question_tokens": 32}},
    "inference": {"max_new_tokens": 24, "beam_size": 3},
}
CORPUS = [
    "SELECT name FROM singer", "SELECT count(*) FROM singer WHERE age > 30",
    "SELECT T1.name FROM singer AS T1 JOIN concert AS T2 ON T1.singer_id = T2.singer_id",
    "how many singers are there?", "what are the names of singers older than 30?",
    "singer: singer_id (number, pk), name (text), country (text), age (number) | concert: concert_id (number, pk)",
]


def make_db(path: Path) -> Path:
    con = sqlite3.connect(path)
    con.executescript("""
        CREATE TABLE singer (singer_id INTEGER PRIMARY KEY, name TEXT, country TEXT, age INTEGER);
        CREATE TABLE concert (concert_id INTEGER PRIMARY KEY, concert_name TEXT, year INTEGER,
                              singer_id INTEGER REFERENCES singer(singer_id));
        INSERT INTO singer VALUES (1, 'Ann', 'France', 31), (2, 'Bo', 'Chile', 25), (3, 'Cy', 'France', 40);
        INSERT INTO concert VALUES (1, 'Spring', 2014, 1), (2, 'Summer', 2015, 3);
    """)
    con.commit()
    con.close()
    return path


def make_model_dir(folder: Path, seed: int = 0) -> Path:
    """config.yaml, tokenizer/, model.safetensors, plugins.json: what a checkpoint holds."""
    from vantage_core.data.tokenizer import SentencePieceTokenizer
    from vantage_core.model.io import plugin_list

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, base=TINY_MODEL, registry=False)
    tok = SentencePieceTokenizer(vocab_size=300).train(CORPUS * 30, folder / "tokenizer")
    write_untrained_model(folder, cfg, tok, seed)
    (folder / "plugins.json").write_text(json.dumps(plugin_list(), indent=2))
    return folder


def write_untrained_model(folder: Path, cfg, vocab, seed: int) -> Path:
    """An untrained model of ``cfg`` over ``vocab`` (weights drawn with ``seed``) saved as a
    checkpoint holds it: model.safetensors and config.yaml."""
    from vantage_core.model import build_model

    mx.random.seed(seed)
    model = build_model(cfg.model, vocab)
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.yaml").write_text(dump_config(cfg))
    return folder


POINTER_MODEL = {
    "run": {"name": "tiny_pointer"},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "max_seq_len": 96, "num_experts": 4,
              "expert_hidden": 32, "cross_attention_every": 1, "tie_embeddings": False,
              "heads": ["vocab", "pointer", "copy"], "router": {"name": "topk", "k": 2},
              "schema_encoder": {"name": "linked", "n_layers": 1, "n_heads": 2, "hidden": 64, "dropout": 0.0}},
    "data": {"target": "actions", "linker": {"name": "lexical"}, "tokenizer": {"name": "sql_actions"}},
    "train": {"select_metric": "action_exact"},
    "inference": {"decoding": "beam", "beam_size": 2, "max_new_tokens": 16, "constraint": {"name": "sql_actions"}},
}
KEYWORD_ACTIONS = ["select", "from", "where", "count", "(", ")", "*", "=", ">", "<", ",", "and", "join", "on"]


def make_pointer_model_dir(folder: Path, seed: int = 0) -> Path:
    """An untrained pointer model (``data.target: actions``) laid out as a checkpoint."""
    from vantage_core.plugins import registry

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, base=POINTER_MODEL, registry=False)
    vocab = registry().build("tokenizer", "sql_actions").train(KEYWORD_ACTIONS, folder / "tokenizer")
    return write_untrained_model(folder, cfg, vocab, seed)


CELLS_DDL = "CREATE TABLE cells (b BLOB, f REAL)"


def make_cells_db(path: Path) -> Path:
    """A database whose every cell is binary (not UTF-8) or an infinite float."""
    con = sqlite3.connect(path)
    con.execute(CELLS_DDL)
    con.executemany("INSERT INTO cells VALUES (?, ?)", [(b"\xff\xfe\x00\x80", float("inf")), (b"\x00", float("-inf"))])
    con.commit()
    con.close()
    return path


class OneAnswer:
    """A processor that leaves each row one token: the next of ``ids`` (then ``ids[-1]``, EOS)."""

    def __init__(self, ids: list[int]):
        self.ids = ids

    def __call__(self, generated, logits):
        from vantage_core.inference.constraints import apply_mask

        allowed = np.zeros(logits.shape, bool)
        for row, tokens in enumerate(generated):
            allowed[row, self.ids[min(len(tokens), len(self.ids) - 1)]] = True
        return apply_mask(logits, allowed)


FIRST_TABLE = "SELECT * FROM {table}"


class FirstTableAnswer:
    """A constraint that leaves a token model one answer: ``answer`` with ``{table}`` the schema's
    first table (by default ``SELECT * FROM`` it)."""

    targets = ("tokens",)

    def __init__(self, answer: str = FIRST_TABLE):
        self.answer = answer

    def bind(self, schema, tokenizer, eos_id, features=None):
        return OneAnswer(tokenizer.encode(self.answer.format(table=schema.tables[0].name)) + [eos_id])


def first_table_engine(folder: Path, answer: str = FIRST_TABLE, **settings):
    """An engine on the model at ``folder`` whose configured constraint is :class:`FirstTableAnswer`:
    the model still reads each question and schema and decodes step by step, and its answer is a
    query that runs on any database (the SQL a test needs, without a trained model).
    ``settings``: other inference settings of its config (``max_new_tokens=96`` for a long answer)."""
    from vantage_core.config import InferenceConfig
    from vantage_core.inference.engine import Engine

    class FirstTableEngine(Engine):
        def constraint(self, spec):
            return None if spec is None else FirstTableAnswer(answer)

    engine = FirstTableEngine.load(folder)
    inference = {**engine.config.inference.model_dump(), "constraint": {"name": "sql_schema"}, **settings}
    engine.config = engine.config.model_copy(update={"inference": InferenceConfig.model_validate(inference)})
    return engine
