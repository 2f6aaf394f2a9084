"""Quantized exports on the CPU: dequantized once at load (``inference.quantized``), they run as
float layers and give what MLX's quantized_matmul gives: the same SQL, logits within 1e-4."""

from __future__ import annotations

import json

import pytest
import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import mlx.nn as nn

from infer_fixture import make_db, make_model_dir
from vantage_core.cli import main
from vantage_core.errors import ConfigError
from vantage_core.inference.engine import Engine
from vantage_core.inference.export import export_model
from vantage_core.model.quantization import dequantize_model, quantize_model, runtime_form

QUESTIONS = ["how many singers?", "names of singers from France", "concerts in 2014"]
LOGIT_TOLERANCE = 1e-4  # float32 sums in another order: quantized_matmul's loop against BLAS's


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A tiny float model, its 8- and 4-bit exports (group size 32) and a database."""
    root = tmp_path_factory.mktemp("quantized")
    model = make_model_dir(root / "model", seed=2)
    for bits in (8, 4):
        export_model(model, root / f"q{bits}", bits=bits, group_size=32)
    return root, make_db(root / "concerts.sqlite")


def _quantized_modules(model) -> list[str]:
    quantized = (nn.QuantizedLinear, nn.QuantizedEmbedding)
    return [path for path, m in model.named_modules() if isinstance(m, quantized) or getattr(m, "bits", None)]


def _candidates(engine, db, **kw) -> list[list[tuple[str, float]]]:
    return [[(c.sql, c.logprob) for c in engine.generate(q, db_path=db, constraint="none", **kw).candidates]
            for q in QUESTIONS]


def _logits(engine, question: str, db) -> mx.array:
    """Teacher-forced logits over the prompt and a few output tokens."""
    req = engine.request(question, engine.schema_of(db), str(db))
    memory = engine.model.encode_schema(engine.model.schema_inputs(engine.host_batch([req])))
    logits, _ = engine.model(mx.array([req.prompt + [7, 21, 42, 5]], dtype=mx.int32), memory)
    return logits


@pytest.mark.parametrize("bits", [8, 4])
def test_dequantized_export_decodes_as_quantized_matmul_does(exports, bits):
    """Loaded dequantized (auto on the CPU), an export gives the SQL and scores that the same
    export gives through MLX's quantized_matmul, greedy and beam; logits agree within 1e-4."""
    root, db = exports
    native = Engine.load(root / f"q{bits}", quantized="native")
    loaded = Engine.load(root / f"q{bits}")
    assert _quantized_modules(native.model) and not _quantized_modules(loaded.model)
    for kw in ({"decoding": "greedy"}, {"decoding": "beam"}):
        want, got = _candidates(native, db, **kw), _candidates(loaded, db, **kw)
        assert [[s for s, _ in c] for c in got] == [[s for s, _ in c] for c in want]
        assert all(abs(a - b) < 1e-3 for cw, cg in zip(want, got) for (_, a), (_, b) in zip(cw, cg))
    for q in QUESTIONS:
        a, b = _logits(native, q, db), _logits(loaded, q, db)
        assert float(mx.abs(a - b).max()) < LOGIT_TOLERANCE * (1 + float(mx.abs(a).max()))


def test_layers_are_plain_float_after_load(exports):
    """Every quantized layer comes back as nn.Linear / nn.Embedding / float expert weights."""
    root, _ = exports
    model = Engine.load(root / "q4").model
    kinds = {type(m) for _, m in model.named_modules()}
    assert nn.Linear in kinds and nn.Embedding in kinds
    assert not kinds & {nn.QuantizedLinear, nn.QuantizedEmbedding}
    banks = [m for _, m in model.named_modules() if hasattr(m, "to_float")]
    assert banks and all(b.bits is None and isinstance(b.w_in[0], mx.array) for b in banks)
    params = dict(__import__("mlx.utils").utils.tree_flatten(model.parameters()))
    assert all(v.dtype == mx.float32 for v in params.values())
    assert not any(k.endswith(("scales", "biases")) for k in params)


def _bank_weights(bank) -> list:
    """An expert bank's weights, float (in, out) arrays or quantized dicts, in a fixed order."""
    return [w for v in bank.values() for w in (v if isinstance(v, list) else [v])
            if isinstance(w, dict) or w.ndim == 2]


@pytest.mark.parametrize("name", ["swiglu", "gelu", "shared_swiglu"])
def test_dequantized_weights_are_those_quantized_matmul_applies(name):
    """On the identity matrix a layer returns its weight: after dequantizing, nn.Linear,
    nn.Embedding (lookup and output head) and every expert weight return exactly what their
    quantized form returned through quantized_matmul."""
    from vantage_core.plugins import registry

    mx.random.seed(0)
    holder = nn.Module()
    holder.linear, holder.embed = nn.Linear(64, 48), nn.Embedding(40, 64)
    holder.bank = registry().build("expert", name, 64, 64, 3)
    widths = holder.bank.quantizable_widths()  # each expert weight's input width
    assert quantize_model(holder, bits=4, group_size=32) == 3
    eye, ids, bank = mx.eye(64), mx.arange(40), holder.bank

    def outputs() -> list[mx.array]:
        experts = [bank.mm(mx.eye(n), w) for n, w in zip(widths, _bank_weights(bank), strict=True)]
        return [holder.linear(eye), holder.embed.as_linear(eye), holder.embed(ids), *experts]

    before = outputs()
    assert dequantize_model(holder) == 3
    assert isinstance(holder.linear, nn.Linear) and isinstance(holder.embed, nn.Embedding) and bank.bits is None
    after = outputs()
    assert len(after) == len(before) == 3 + len(widths)
    assert all(mx.array_equal(a, b) for a, b in zip(before, after))


def test_auto_dequantizes_on_the_cpu_only():
    """auto: dequantize on the CPU, quantized_matmul on a GPU; explicit choices win."""
    assert runtime_form("auto", mx.Device(mx.cpu)) == "dequantize"
    assert runtime_form("auto", mx.Device(mx.gpu)) == "native"
    assert runtime_form("native", mx.Device(mx.cpu)) == "native"
    assert runtime_form("dequantize", mx.Device(mx.gpu)) == "dequantize"


def test_a_bad_quantized_value_is_one_clear_error(exports, tmp_path, capsys):
    """A wrong inference.quantized, given to the loader or stored in an export, is one error
    line naming the option and its valid values."""
    root, db = exports
    with pytest.raises(ConfigError, match=r"inference\.quantized: 'fast'; valid: auto, dequantize, native"):
        Engine.load(root / "q8", quantized="fast")
    bad = tmp_path / "bad"
    export_model(root / "q8", bad)
    doc = json.loads((bad / "config.json").read_text())
    doc["vantage"]["config"]["inference"]["quantized"] = "fast"
    (bad / "config.json").write_text(json.dumps(doc))
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "-m", str(bad), "--db", str(db), "how many singers?"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [
        f"error: {bad / 'config.json'}: vantage.config: inference.quantized: "
        f"Input should be 'auto', 'dequantize' or 'native'"]


def test_reexporting_a_quantized_export_keeps_it_quantized(exports, tmp_path):
    """Exporting an export again (new decoding settings) saves its quantized weights as stored,
    not the float weights the CPU would load."""
    root, db = exports
    again = tmp_path / "again"
    rec = export_model(root / "q8", again, inference={"beam_size": 2})
    assert rec["quantization"]["bits"] == 8
    assert (again / "model.safetensors").stat().st_size == (root / "q8" / "model.safetensors").stat().st_size
    a, b = Engine.load(root / "q8", quantized="native"), Engine.load(again, quantized="native")
    assert _candidates(a, db, decoding="greedy") == _candidates(b, db, decoding="greedy")


def test_doctor_says_how_quantized_exports_run():
    """`vantage doctor` has a line saying which form 8/4-bit exports take on the default device."""
    from vantage_core.cli.doctor import report

    line = next(line for line in report(64) if line.startswith("quantized"))
    on_cpu = mx.default_device().type == mx.DeviceType.cpu
    assert ("dequantized to float once at load on the CPU" if on_cpu else "through quantized_matmul") in line


@pytest.mark.parametrize("form, quantized_layers", [("native", True), ("dequantize", False)])
def test_evaluate_set_chooses_the_form(exports, tmp_path, monkeypatch, form, quantized_layers):
    """`vantage evaluate --set inference.quantized=...` decodes with the model loaded in that form."""
    from click.testing import CliRunner

    from vantage_core.cli import cli
    from vantage_core.inference import engine as engine_module

    root, _ = exports
    seen = []
    decode_examples = engine_module.predict_examples

    def recording(engine, examples, **kw):
        seen.append(bool(_quantized_modules(engine.model)))
        return decode_examples(engine, examples, **kw)

    monkeypatch.setattr(engine_module, "predict_examples", recording)
    args = ["evaluate", "--checkpoint", str(root / "q8"), "--dataset", "synthetic", "--split", "test",
            "--dataset-param", "n_databases=6", "--dataset-param", "examples_per_db=2",
            "--dataset-param", f"out_dir={tmp_path / 'dbs'}", "-m", "valid_sql", "--limit", "2",
            "-o", str(tmp_path / "eval"), "--set", f"inference.quantized={form}"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [quantized_layers]
