"""The schema-pointing model (``data.target: actions``): pointer and copy heads, the KV cache,
a self-contained checkpoint answering on a database it never saw, export and reload."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vantage_core  # noqa: F401
import mlx.core as mx

from infer_fixture import POINTER_MODEL, make_db
from vantage_core.config import load_config
from vantage_core.sql.format import formatted_sql

TINY = {
    "run": {"name": "tiny_pointer"},
    "model": POINTER_MODEL["model"],
    "data": {"target": "actions", "linker": {"name": "lexical"},
             "train": [{"name": "synthetic", "n_databases": 12, "examples_per_db": 4}],
             "validation": [{"name": "synthetic", "n_databases": 12, "examples_per_db": 4, "limit": 8}],
             "tokenizer": {"name": "sql_actions"}},
    "train": {"steps": 4, "batch_size": 4, "eval_every": 2, "save_every": 2, "select_metric": "action_exact",
              "warmup_steps": 1},
    "inference": {"decoding": "beam", "beam_size": 3, "max_new_tokens": 24, "length_penalty": 0.0,
                  "constraint": {"name": "sql_actions"}},
}
QUESTIONS = ["How many singers are there?", "What are the names of singers from France?",
             "List the concerts of 2014 with the singer's name."]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained for a few steps (its own cache folder), and a database it never saw."""
    from vantage_core.train.run import train

    root = tmp_path_factory.mktemp("pointer")
    old = os.environ.get("VANTAGE_CACHE")
    os.environ["VANTAGE_CACHE"] = str(root / "cache")
    try:
        cfg = load_config(base={**TINY, "run": {**TINY["run"], "dir": str(root / "run")}})
        summary = train(cfg, overwrite=True, progress=False, echo=lambda *_: None)
    finally:
        if old is None:
            os.environ.pop("VANTAGE_CACHE")
        else:
            os.environ["VANTAGE_CACHE"] = old
    return root, cfg, summary, make_db(root / "concerts.sqlite")


def test_training_writes_a_self_contained_checkpoint(trained):
    root, cfg, summary, _ = trained
    best = root / "run" / "checkpoints" / "best"
    assert summary["steps"] == 4 and "action_exact" in summary["validation"]
    assert {p.name for p in best.iterdir()} >= {"model.safetensors", "config.yaml", "tokenizer", "plugins.json"}
    vocab = json.loads((best / "tokenizer" / "tokenizer.json").read_text())
    assert vocab["name"] == "sql_actions" and {"select", "from", "<val>"} <= set(vocab["itos"])
    records = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "eval" and "heldout_ce" in r for r in records)
    assert all(len(r["expert_load"]) == 2 for r in records if r.get("kind") == "train")
    assert (root / "cache" / "minilm" / "states.sqlite").is_file()  # the frozen states, cached by content


def test_pointer_and_copy_heads_score_this_databases_items_and_question(trained):
    from vantage_core.inference.engine import Engine

    root, _, _, db = trained
    engine = Engine.load(root / "run")
    model, vocab = engine.model, engine.tokenizer
    schema = engine.schema_of(db)
    small = schema.__class__(schema.db_id, schema.tables[:1], [])
    reqs = [engine.request(QUESTIONS[0], schema, str(db)), engine.request(QUESTIONS[2], small, str(db))]
    from vantage_core.data.actions import collate
    from vantage_core.data.example import Example

    feats = [r.features for r in reqs]
    exs = [Example(question=q, sql="", db_id="c", schema=s, db_paths=[]) for q, s in ((QUESTIONS[0], schema), (QUESTIONS[2], small))]
    batch = collate(feats, exs, vocab, with_targets=False)
    memory = model.encode_schema(model.schema_inputs(batch))
    V = vocab.vocab_size
    N, Q = batch["item_mask"].shape[1], batch["q_mask"].shape[1]
    n_small, q_first = int(batch["item_mask"][1].sum()), int(batch["q_mask"][0].sum())
    assert n_small < N and q_first < Q  # row 1 pads items, row 0 pads question pieces
    tokens = mx.array([[vocab.bos_id, V + 2, V + N + 1], [vocab.bos_id, V + 0, vocab.stoi["select"]]])
    logits, aux = model(tokens, memory)
    assert logits.shape == (2, 3, V + N + Q) and len(aux["loads"]) == 2
    assert float(logits[1, :, V + n_small:V + N].max()) < -1e8  # padded items are never chosen
    assert float(logits[0, :, V + N + q_first:].max()) < -1e8  # nor padded question pieces
    x = model.embed_ids(tokens, memory)  # an item enters as its encoded state
    assert np.allclose(np.array(x[0, 1]), np.array(model.item_in(memory.items[0, 2])), atol=1e-5)
    assert np.allclose(np.array(x[0, 2]), np.array(model.question_in(memory.question[0, 1])), atol=1e-5)
    assert np.allclose(np.array(x[1, 2]), np.array(model.embed(mx.array(vocab.stoi["select"]))), atol=1e-6)


class _History:
    """A stand-in cache that keeps the ids so far (``reorder_cache`` reorders its rows)."""

    def __init__(self):
        self.tokens = None


class Uncached:
    """The model run over the whole sequence at every step: no KV cache."""

    def __init__(self, model):
        self.model, self.args = model, model.args

    def make_cache(self):
        return [_History()]

    def __call__(self, tokens, memory=None, cache=None):
        h = cache[0]
        h.tokens = tokens if h.tokens is None else mx.concatenate([h.tokens, tokens], axis=1)
        return self.model(h.tokens, memory)


def test_cached_and_uncached_decoding_give_identical_candidates(trained):
    from vantage_core.inference.decoding import Search, beam_search, greedy
    from vantage_core.plugins import registry

    root, _, _, db = trained
    from vantage_core.inference.engine import Engine

    engine = Engine.load(root / "run")
    model, vocab = engine.model, engine.tokenizer
    schema = engine.schema_of(db)
    constraint = registry().build("constraint", "sql_actions")
    for question in QUESTIONS:
        req = engine.request(question, schema, str(db))
        memory = model.encode_schema(model.schema_inputs(engine.host_batch([req])))
        runs = []
        for m in (model, Uncached(model)):
            proc = constraint.bind(schema, vocab, vocab.eos_id, features=req.features)
            beams = beam_search(m, req.prompt, eos_id=vocab.eos_id, schema=memory, processor=proc,
                                search=Search("beam", beam_size=3, max_new_tokens=20, length_penalty=0.0))
            g = greedy(m, req.prompt, eos_id=vocab.eos_id, search=Search(max_new_tokens=20), schema=memory,
                       processor=constraint.bind(schema, vocab, vocab.eos_id, features=req.features))
            runs.append(([h.tokens for h in beams], [h.logprob for h in beams], g.tokens))
        (tok_a, lp_a, g_a), (tok_b, lp_b, g_b) = runs
        assert tok_a == tok_b and g_a == g_b
        assert np.allclose(lp_a, lp_b, atol=1e-3)


def test_checkpoint_answers_on_a_new_database_in_a_fresh_process(trained):
    """Load the run in a fresh process and generate on a database made here: nothing but the
    checkpoint folder (and the installed MiniLM) is needed."""
    from vantage_core.inference.engine import Engine

    root, _, _, db = trained
    env = {**os.environ, "VANTAGE_CACHE": str(root / "fresh-cache")}  # no cached states to lean on
    out = subprocess.run([sys.executable, "-m", "vantage_core.cli", "generate", "--checkpoint", str(root / "run"),
                          "--db", str(db), "--json", "--run", QUESTIONS[1]],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode in (0, 1), out.stderr
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    here = Engine.load(root / "run").generate(QUESTIONS[1], db_path=db)
    assert answer["sql"] == formatted_sql(here.sql) and answer["sql"]  # shown formatted, the same query
    assert [c["sql"] for c in answer["candidates"]] == [formatted_sql(c.sql) for c in here.candidates]


def test_export_quantized_and_reload(trained):
    from vantage_core.inference.engine import Engine
    from vantage_core.inference.export import export_model

    root, _, _, db = trained
    plain = export_model(root / "run", root / "export")
    q8 = export_model(root / "run", root / "export-q8", bits=8, group_size=32)
    assert q8["parameter_bytes"] < plain["parameter_bytes"]
    a, b = Engine.load(root / "run"), Engine.load(root / "export")
    for q in QUESTIONS:
        assert a.generate(q, db_path=db).sql == b.generate(q, db_path=db).sql
    c = Engine.load(root / "export-q8")
    assert c.generate(QUESTIONS[0], db_path=db).candidates  # the quantized model still decodes


def test_expert_atlas_of_a_pointer_model(trained):
    from vantage_core.analysis.atlas import AtlasOptions, analyze_run
    from vantage_core.data.sql_roles import ROLES

    root, _, _, _ = trained
    atlas, files = analyze_run(root / "run", "synthetic", "validation",
                               AtlasOptions(limit=8, n_shuffles=2, plots=False, progress=False), out_dir=root / "atlas")
    assert len(atlas.layers) == 2 and atlas.num_experts == 4
    assert files and all(f.exists() for f in files.values())
    counts = sum(la.counts for la in atlas.layers)  # every action routed, once per layer, k slots each
    assert counts.sum() > 0 and counts[:, ROLES.index("column")].sum() > 0 and counts[:, ROLES.index("table")].sum() > 0
    assert json.loads(files["summary"].read_text())["layers"]


def test_serve_answers_with_a_pointer_model(trained):
    from fastapi.testclient import TestClient

    from vantage_core.inference.engine import Engine
    from vantage_core.inference.serve import ServeSettings, create_app

    root, _, _, db = trained
    app = create_app(Engine.load(root / "run"), ServeSettings(db_dirs=[str(db.parent)]))
    with TestClient(app) as client:
        r = client.post("/v1/generate", json={"question": QUESTIONS[0], "db_id": "concerts", "run": True,
                                              "routing": True})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["sql"] and body["routing"] and all(len(step) == 2 for step in body["routing"])
        assert len(body["tokens"]) == len(body["routing"]) and all(body["tokens"])  # every action has a label


def test_questions_decoded_together_get_what_each_gets_alone(trained):
    """The batched beam search pads items and question pieces to the batch's widest; every
    request still gets exactly the candidates of a search of its own."""
    from vantage_core.inference.engine import Engine, Question

    root, _, _, db = trained
    engine = Engine.load(root / "run")
    schema = engine.schema_of(db)
    small = schema.__class__(schema.db_id, schema.tables[:1], [])
    questions = [Question(QUESTIONS[0], db, schema), Question(QUESTIONS[2], db, small), Question(QUESTIONS[1], db, schema)]
    together = engine.generate_many(questions)
    for q, g in zip(questions, together):
        alone = engine.generate(q.text, db_path=q.db_path, schema=q.schema)
        assert [c.sql for c in g.candidates] == [c.sql for c in alone.candidates]
        assert np.allclose([c.logprob for c in g.candidates], [c.logprob for c in alone.candidates], atol=1e-3)
        assert g.sql == alone.sql and g.choice == alone.choice


def test_evaluate_an_export_with_its_own_config(trained, tmp_path):
    """An export carries its config in config.json: `vantage evaluate --checkpoint EXPORT` reads
    its metrics and dataset parameters from there, and --set still changes the decoding."""
    from click.testing import CliRunner

    from vantage_core.cli import cli
    from vantage_core.inference.export import export_model

    root, _, _, _ = trained
    export_model(root / "run", tmp_path / "export")
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(tmp_path / "export"), "--dataset", "synthetic",
                                   "--split", "validation", "--limit", "4", "--out", str(tmp_path / "eval"),
                                   "--set", "inference.beam_size=2"])
    assert res.exit_code == 0, res.output
    decoding = json.loads((tmp_path / "eval" / "decoding.json").read_text())
    assert decoding["examples"] == 4 and decoding["inference"]["beam_size"] == 2
    assert "execution:" in res.output and "exact_match:" in res.output


def test_a_dense_pointer_model_trains_with_compile_on(tmp_path, monkeypatch):
    """No MoE layer, so nothing reads the host and mx.compile traces the gradient step; where MLX's
    compiler refuses the graph (mlx 0.32.4: IndexError _Map_base::at) the trainer falls back."""
    from vantage_core.train.run import train

    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    base = {**TINY, "run": {"name": "dense", "dir": str(tmp_path / "run")},
            "model": {**TINY["model"], "moe_every": 0, "dense_hidden": 32},
            "data": {**TINY["data"], "validation": []},
            "train": {**TINY["train"], "steps": 2, "eval_every": 0, "save_every": 0, "compile": True}}
    summary = train(load_config(base=base), overwrite=True, progress=False, echo=lambda *_: None)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])


def test_an_ensemble_of_a_model_with_itself_decodes_as_the_model(trained):
    """The mean of identical log-probabilities is the model's own: same candidates, same scores."""
    from vantage_core.inference.engine import Engine

    root, _, _, db = trained
    one, two = Engine.load(root / "run"), Engine.load([root / "run", root / "run"])
    assert two.info["ensemble"] == [one.info["folder"]] * 2
    for q in QUESTIONS:
        a, b = one.generate(q, db_path=db), two.generate(q, db_path=db)
        assert [c.sql for c in a.candidates] == [c.sql for c in b.candidates]
        assert np.allclose([c.logprob for c in a.candidates], [c.logprob for c in b.candidates], atol=1e-4)


def test_an_ensemble_scores_the_mean_of_its_members_log_probabilities(trained):
    from vantage_core.model.io import load_model
    from vantage_core.inference.ensemble import Ensemble

    root, _, _, db = trained
    a, tok, cfg, _ = load_model(root / "run")
    b, _, _, _ = load_model(root / "run")
    b.update({"norm": {"weight": b.norm.weight * 3.0}})  # a different member
    from vantage_core.inference.engine import Engine

    req = Engine(a, tok, cfg).request(QUESTIONS[1], Engine(a, tok, cfg).schema_of(db), str(db))
    batch = Engine(a, tok, cfg).host_batch([req])
    ens = Ensemble([a, b])
    tokens = mx.array([[tok.bos_id]])
    got, _ = ens(tokens, ens.encode_schema(ens.schema_inputs(batch)), cache=ens.make_cache())
    want = []
    for m in (a, b):
        logits, _ = m(tokens, m.encode_schema(m.schema_inputs(batch)), cache=m.make_cache())
        want.append(np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True)))
    finite = np.isfinite(want[0])
    assert not np.allclose(want[0][finite], want[1][finite], atol=1e-3)
    assert np.allclose(np.array(got)[finite], ((want[0] + want[1]) / 2)[finite], atol=1e-5)


def test_an_ensemble_refuses_a_model_that_reads_requests_otherwise(trained, tmp_path):
    import shutil

    import yaml

    from vantage_core.errors import ConfigError
    from vantage_core.inference.engine import Engine

    root, _, _, _ = trained
    other = tmp_path / "other"
    shutil.copytree(root / "run" / "checkpoints" / "last", other)
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["data"]["linker"] = {"name": "none"}
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=r"other: data\.linker is .*none.*must read requests alike"):
        Engine.load([root / "run", other])


def test_evaluate_with_an_ensemble_of_checkpoints(trained, tmp_path):
    from click.testing import CliRunner

    from vantage_core.cli import cli

    root, _, _, _ = trained
    ckpts = root / "run" / "checkpoints"
    res = CliRunner().invoke(cli, ["evaluate", "--checkpoint", str(ckpts / "best"), "--checkpoint", str(ckpts / "last"),
                                   "--dataset", "synthetic", "--split", "validation", "--limit", "3",
                                   "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    decoding = json.loads((tmp_path / "eval" / "decoding.json").read_text())
    assert [os.path.basename(p) for p in decoding["ensemble"]] == ["best", "last"]
    assert len((tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()) == 3


def test_generate_with_an_ensemble_of_checkpoints(trained):
    from click.testing import CliRunner

    from vantage_core.cli import cli

    root, _, _, db = trained
    ckpts = root / "run" / "checkpoints"
    args = ["generate", "-m", str(ckpts / "best"), "-m", str(ckpts / "last"), "--db", str(db), "--json", QUESTIONS[0]]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    from vantage_core.inference.engine import Engine

    want = Engine.load([ckpts / "best", ckpts / "last"]).generate(QUESTIONS[0], db_path=db)
    assert out["question"] == QUESTIONS[0] and out["sql"] == formatted_sql(want.sql)
