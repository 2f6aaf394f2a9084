"""``vantage export``: a self-contained model folder that ``generate`` and ``serve`` load.

The folder holds ``model.safetensors`` (the weights, optionally quantized with MLX's
``nn.quantize``), ``config.yaml`` (the resolved config, with the inference settings),
``tokenizer/``, ``plugins.json`` (every plugin the model was built with, with its distribution
and version) and ``export.json`` (format version, source, quantization, parameter bytes).
Optimizer and RNG state stay behind: the folder is for inference only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten

from vantage_core.config import dump_config
from vantage_core.errors import VantageError
from vantage_core.inference.engine import EXPORT_FILE, load_model, quantize_model

FORMAT_VERSION = 1


def _nbytes(model: Any) -> int:
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def export_model(source: str | Path, out: str | Path, *, bits: int | None = None, group_size: int = 64,
                 overwrite: bool = False, inference: dict | None = None) -> dict:
    """Write the model at ``source`` (run, checkpoint or export folder) to ``out``.

    ``bits`` (4 or 8) quantizes the linear and embedding layers; ``inference`` sets fields of
    the ``inference`` config section stored with it (decoding, constraint, ...). Returns the
    ``export.json`` record.
    """
    from vantage_core.config import InferenceConfig
    from vantage_core.train.checkpoint import plugin_list

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise VantageError(f"{out} already exists; pass --overwrite to replace it")
        shutil.rmtree(out)
    model, tokenizer, cfg, info = load_model(source)
    if info.get("quantization") and bits:
        raise VantageError(f"{source}: already quantized ({info['quantization']['bits']} bits); "
                           f"export from the float checkpoint instead")
    float_bytes = _nbytes(model)
    quant = info.get("quantization")
    if bits:
        n = quantize_model(model, bits=bits, group_size=group_size)
        mx.eval(model.parameters())
        quant = {"bits": bits, "group_size": group_size, "layers": n}
    if inference:
        cfg.inference = InferenceConfig.model_validate({**cfg.inference.model_dump(), **inference})
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
        (tmp / "config.yaml").write_text(dump_config(cfg))
        tokenizer.save(tmp / "tokenizer")
        src_plugins = Path(info["folder"]) / "plugins.json"
        plugins = json.loads(src_plugins.read_text()) if src_plugins.is_file() else plugin_list()
        (tmp / "plugins.json").write_text(json.dumps(plugins, indent=2) + "\n")
        record = {"format_version": FORMAT_VERSION, "source": str(Path(info["folder"]).resolve()),
                  "quantization": quant, "parameter_bytes": _nbytes(model), "float_parameter_bytes": float_bytes,
                  "vantage_version": vantage_core.__version__}
        (tmp / EXPORT_FILE).write_text(json.dumps(record, indent=2) + "\n")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return record
