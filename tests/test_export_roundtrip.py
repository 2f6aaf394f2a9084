"""`vantage export`: the folder reloads to the same SQL; quantized exports load and run."""

import json

import pytest
from click.testing import CliRunner

from infer_fixture import make_db, make_model_dir
from vantage_core.cli import cli
from vantage_core.errors import VantageError
from vantage_core.inference.engine import Engine
from vantage_core.inference.export import export_model

QUESTIONS = ["how many singers?", "names of singers from France", "concerts in 2014"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    return root, make_model_dir(root / "model", seed=1), make_db(root / "concerts.sqlite")


def _sqls(engine, db, **kw):
    return [[c.sql for c in engine.generate(q, db_path=db, **kw).candidates] for q in QUESTIONS]


def test_export_reload_gives_identical_sql(paths):
    root, model, db = paths
    res = CliRunner().invoke(cli, ["export", "-m", str(model), "-o", str(root / "exported"),
                                   "--constraint", "sql_schema"])
    assert res.exit_code == 0, res.output
    out = root / "exported"
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "config.json", "vantage_tokenizer", "plugins.json",
                                               "README.md"}  # the layout tests/test_export_layout.py checks
    assert not (out / "optimizer.safetensors").exists()
    plugins = json.loads((out / "plugins.json").read_text())
    assert any(p["kind"] == "router" and p["name"] == "topk" for p in plugins)
    a, b = Engine.load(model), Engine.load(out)
    assert b.config.inference.constraint.name == "sql_schema"  # the export's own settings
    for kw in ({"decoding": "greedy"}, {"decoding": "beam"}):
        assert _sqls(a, db, constraint="none", **kw) == _sqls(b, db, constraint="none", **kw)


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_export_loads_smaller_and_runs(paths, bits):
    root, model, db = paths
    rec = export_model(model, root / f"q{bits}", bits=bits, group_size=32)
    assert rec["quantization"]["bits"] == bits and rec["quantization"]["layers"] > 0
    assert rec["parameter_bytes"] < rec["float_parameter_bytes"]
    engine = Engine.load(root / f"q{bits}")
    again = Engine.load(root / f"q{bits}")
    assert _sqls(engine, db) == _sqls(again, db)  # a quantized export is deterministic too
    with pytest.raises(VantageError, match="already quantized"):
        export_model(root / f"q{bits}", root / "twice", bits=bits)


def test_export_refuses_to_overwrite(paths):
    root, model, _ = paths
    export_model(model, root / "once")
    with pytest.raises(VantageError, match="already exists"):
        export_model(model, root / "once")
    export_model(model, root / "once", overwrite=True)


@pytest.mark.parametrize("name", ["swiglu", "gelu", "shared_swiglu"])
def test_expert_banks_quantize_and_stay_close(name):
    """nn.quantize reaches the expert banks (the bulk of an MoE's weights), not only nn.Linear."""
    import mlx.core as mx

    from vantage_core.model.quantization import quantize_model
    from vantage_core.plugins import registry

    mx.random.seed(0)
    bank = registry().build("expert", name, 64, 128, 4)
    x = mx.random.normal((10, 64))
    counts = [3, 0, 5, 2]
    before, size = bank(x, counts), bank.routed_size()
    holder = type("Holder", (__import__("mlx.nn").nn.Module,), {})()
    holder.bank = bank
    assert quantize_model(holder, bits=8, group_size=32) == 1
    assert isinstance(bank.w_in[0], dict) and bank.bits == 8
    assert bank.routed_size() == size  # counts the float parameters the quantized ones stand for
    after = bank(x, counts)
    assert after.shape == before.shape
    assert float(mx.abs(after - before).max()) < 0.02 * float(mx.abs(before).max())
