"""`vantage export` writes the layout MLX and Hugging Face tools read
(config.json with model_type and mlx-lm's quantization block, model.safetensors with
format: mlx, the tokenizer under vantage_tokenizer/, a model card), `vantage generate` in a
fresh process gives the same SQL from it as the model it came from, and older exports still load
or fail clearly."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest

from infer_fixture import make_db, make_model_dir
from vantage_core.errors import VantageError
from vantage_core.inference.engine import Engine
from vantage_core.inference.export import export_model

QUESTIONS = ["how many singers?", "names of singers from France"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-layout")
    return root, make_model_dir(root / "model", seed=2), make_db(root / "concerts.sqlite")


def safetensors_metadata(path) -> dict:
    """The ``__metadata__`` of a .safetensors file, read from its header as the format defines it."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length)).get("__metadata__", {})


def fresh_process_sql(folder, db, decoding: str) -> list[str]:
    """`vantage generate --json` in a new Python process: nothing shared with this one."""
    out = []
    for q in QUESTIONS:
        res = subprocess.run([sys.executable, "-m", "vantage_core.cli", "generate", "--checkpoint", str(folder),
                              "--db", str(db), "--json", "--decoding", decoding, "--constraint", "none", q],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        out.append(json.loads(res.stdout)["sql"])
    return out


def in_process_sql(engine, db, decoding: str) -> list[str]:
    return [engine.generate(q, db_path=db, decoding=decoding, constraint="none").sql for q in QUESTIONS]


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_layout_and_fresh_process_sql(paths, bits):
    root, model, db = paths
    out = root / f"export-{bits or 32}"
    export_model(model, out, bits=bits, group_size=32)
    names = {p.name for p in out.iterdir()}
    assert names == {"config.json", "model.safetensors", "vantage_tokenizer", "plugins.json", "README.md"}
    assert not (out / "tokenizer.json").exists()  # Hugging Face would parse it as a fast tokenizer
    assert (out / "vantage_tokenizer" / "tokenizer.model").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "vantage_moe" and cfg["num_local_experts"] == 4 and cfg["hidden_size"] == 32
    assert cfg["num_experts_per_tok"] == 2 and cfg["vantage"]["config"]["model"]["router"]["name"] == "topk"
    if bits:
        assert cfg["quantization"] == {"group_size": 32, "bits": bits, "mode": "affine"} == cfg["quantization_config"]
    else:
        assert "quantization" not in cfg
    assert safetensors_metadata(out / "model.safetensors") == {"format": "mlx"}
    card = (out / "README.md").read_text()
    for heading in ("## Training data", "## Held-out figures", "## Intended use", "## Limits", "## License"):
        assert heading in card
    assert card.startswith("---\nlicense: mit\n")
    exported = Engine.load(out)
    for decoding in ("greedy", "beam"):
        here = in_process_sql(exported, db, decoding)
        if bits is None:  # float: the very SQL of the checkpoint it came from
            assert here == in_process_sql(Engine.load(model), db, decoding)
        assert fresh_process_sql(out, db, decoding) == here


def test_older_export_layout_still_loads(paths):
    """Format 1 (config.yaml, export.json, tokenizer/) is what the engine reads directly."""
    root, model, db = paths
    old = root / "old-export"
    shutil.copytree(model, old)
    (old / "export.json").write_text(json.dumps({"format_version": 1, "quantization": None}))
    assert in_process_sql(Engine.load(old), db, "greedy") == in_process_sql(Engine.load(model), db, "greedy")


def test_foreign_or_future_config_json_is_a_clear_error(paths):
    root, model, _ = paths
    out = root / "broken"
    export_model(model, out)
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "vantage": {**cfg["vantage"], "format_version": 99}}))
    with pytest.raises(VantageError, match=r"config.json: vantage.format_version 99; this Vantage reads 2"):
        Engine.load(out)
    (out / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(VantageError, match=r"config.json: no `vantage.config` block"):
        Engine.load(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(VantageError, match=r"config.json: not valid JSON"):
        Engine.load(out)


@pytest.mark.slow
def test_actions_model_exports_its_action_vocabulary(tmp_path):
    """The pointer model of the quickstart (two steps): its action vocabulary travels under
    vantage_tokenizer/ and the export decodes what the run decodes."""
    from vantage_core.cli.quickstart import run_quickstart

    tiny = [{"name": "synthetic", "n_databases": 20, "examples_per_db": 3}]
    sets = ["train.steps=2", "train.eval_every=2", "train.save_every=2", "train.batch_size=4",
            f"data.train={json.dumps(tiny)}", f"data.validation={json.dumps([{**tiny[0], 'limit': 4}])}",
            f"data.test={json.dumps([{**tiny[0], 'limit': 4}])}", "inference.beam_size=2",
            "inference.max_new_tokens=12"]
    run_quickstart(tmp_path / "run", overrides=sets, progress=False, echo=lambda s: None)
    export_model(tmp_path / "run", tmp_path / "export")
    meta = json.loads((tmp_path / "export" / "vantage_tokenizer" / "tokenizer.json").read_text())
    assert meta["name"] == "sql_actions"
    assert "Held-out figures" in (tmp_path / "export" / "README.md").read_text()
    from vantage_core.plugins import registry

    ex = registry().build("dataset", "synthetic", n_databases=20, examples_per_db=3).load("test").examples[0]
    a, b = Engine.load(tmp_path / "run"), Engine.load(tmp_path / "export")
    for decoding in ("greedy", "beam"):
        assert a.generate(ex.question, db_path=ex.db_paths[0], decoding=decoding).sql == \
            b.generate(ex.question, db_path=ex.db_paths[0], decoding=decoding).sql
