"""A tiny untrained model folder (as a checkpoint holds it) and a SQLite database, for the
inference, serving and export tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

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
    from vantage_core.model import build_model
    from vantage_core.train.checkpoint import plugin_list

    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, base=TINY_MODEL, registry=False)
    tok = SentencePieceTokenizer(vocab_size=300).train(CORPUS * 30, folder / "tokenizer")
    mx.random.seed(seed)
    model = build_model(cfg.model, tok)
    mx.eval(model.parameters())
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.yaml").write_text(dump_config(cfg))
    (folder / "plugins.json").write_text(json.dumps(plugin_list(), indent=2))
    return folder
