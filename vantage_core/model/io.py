"""Reading and writing models: every checkpoint, run folder and export goes through here.

A model lives in one of three layouts, and :func:`load_model` reads each of them:

- a **checkpoint** folder, written by :func:`save_checkpoint` while training::

    model.safetensors      every parameter of the model (trainable and frozen)
    optimizer.safetensors  the optimizer's state (step, moments), flattened
    rng.safetensors        MLX's random key at the save (the stream is reseeded per step)
    trainer_state.json     step, batches consumed, best validation score, ...
    config.yaml            the resolved config
    plugins.json           name, kind, distribution and version of every registered plugin
    tokenizer/             the decoder's tokenizer
    training_weights.safetensors  the raw trainable weights, where model.safetensors holds their
                           moving average (``train.ema_decay``); only for --resume

- a **run directory**: its ``checkpoints/best``, else ``checkpoints/last``;
- an **export** (``vantage export``, written through :func:`save_export`): ``config.json`` with
  the fields Hugging Face and mlx-lm tools read and the Vantage config under ``vantage``,
  ``model.safetensors`` (possibly quantized), ``vantage_tokenizer/``, ``plugins.json`` and a
  model card; or the first export format (``config.yaml``, ``export.json``, ``tokenizer/``).

A checkpoint is written as every output folder is (:func:`vantage_core.folders.new_folder`):
first in full to a temporary sibling folder and fsync'ed; then the old folder is renamed aside,
the new one renamed into place, and the old one deleted. Each rename is atomic, and
:func:`resolve_checkpoint` falls back to the renamed-aside folder, so an interruption between the
two renames loses nothing. A temporary folder left by a save that was killed is removed by the
next save beside it.

Quantized weights run in the form ``inference.quantized`` chooses for the device
(:mod:`vantage_core.model.quantization`): as stored, or dequantized to float once, at load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
import yaml
from mlx.utils import tree_flatten, tree_unflatten

from vantage_core.config import Config, dump_config, load_config
from vantage_core.data.tokenizer import load_tokenizer
from vantage_core.errors import ConfigError, VantageError
from vantage_core.folders import new_folder
from vantage_core.model.build import build_model
from vantage_core.model.quantization import dequantize_model, quantize_model, runtime_form

MODEL_FILE = "model.safetensors"
STATE_FILE = "trainer_state.json"
ASIDE_SUFFIX = ".old"
TRAINING_WEIGHTS = "training_weights.safetensors"
FIRST_EXPORT_FILE = "export.json"  # the first export format: format version and quantization beside config.yaml
FORMAT_VERSION = 2  # of an export; 1: config.yaml + export.json + tokenizer/ (still loaded)
CONFIG_FILE = "config.json"
TOKENIZER_DIR = "vantage_tokenizer"
MODEL_TYPE = "vantage_moe"
SAFETENSORS_METADATA = {"format": "mlx"}


# ---------------------------------------------------------------------------- finding

def resolve_checkpoint(path: str | Path) -> Path:
    """The complete checkpoint at ``path``, or the one renamed aside by an interrupted save."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ASIDE_SUFFIX)):
        if (candidate / STATE_FILE).exists() and (candidate / MODEL_FILE).exists():
            return candidate
    raise VantageError(f"{path}: no complete checkpoint here (expected {STATE_FILE} and {MODEL_FILE})")


def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding ``model.safetensors``: ``path`` itself, or a run's best/last checkpoint."""
    p = Path(path)
    if not p.exists():
        raise VantageError(f"{p}: no such folder; give a run directory, a checkpoint folder or an export")
    if (p / MODEL_FILE).is_file():
        return p
    for name in ("best", "last"):
        try:
            return resolve_checkpoint(p / "checkpoints" / name)
        except VantageError:
            continue
    raise VantageError(f"{p}: holds neither {MODEL_FILE} nor checkpoints/best or checkpoints/last "
                       f"(expected a run directory, a checkpoint folder or a `vantage export` folder)")


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export in the current layout (``config.json`` beside the weights)."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / MODEL_FILE).is_file()


def is_any_export(folder: str | Path) -> bool:
    """Whether ``folder`` holds an export of Vantage's, in the current layout (a ``config.json``
    with a ``vantage`` block) or the first one (``export.json``): what ``vantage export
    --overwrite`` may replace."""
    folder = Path(folder)
    if (folder / FIRST_EXPORT_FILE).is_file():
        return True
    try:
        doc = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("vantage"), dict)


# ---------------------------------------------------------------------------- reading

def read_safetensors(file: str | Path) -> dict:
    """The arrays of a ``.safetensors`` file; a truncated or corrupt one is a clear error."""
    try:
        return mx.load(str(file))
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).split("] ", 1)[-1]  # MLX prefixes its function name
        raise VantageError(f"{file}: cannot be read, truncated or corrupt ({reason}); resume from another "
                           f"checkpoint or start again with --overwrite") from None


def load_weights(model: Any, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into ``model`` strictly (checkpoints and exports alike)."""
    file = Path(folder) / MODEL_FILE
    weights = read_safetensors(file)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise VantageError(f"{file} does not fit the model its config.yaml builds: {exc}") from None
    mx.eval(model.parameters())


def load_model(path: str | Path, quantized: str | None = None) -> tuple[Any, Any, Config, dict]:
    """``(model, tokenizer, config, info)`` from a checkpoint, run or export folder, in eval mode;
    quantized layers in the form ``quantized`` says (default: the config's ``inference.quantized``).
    ``info`` holds the export's record (quantization, sizes) where there is one, and ``folder``."""
    folder, cfg, tokenizer, info, quantization = read_model_folder(path)
    model = model_with_weights(cfg, tokenizer, folder, quantization, quantized)
    return model, tokenizer, cfg, {**info, "folder": str(folder)}


def read_model_folder(path: str | Path) -> tuple[Path, Config, Any, dict, dict | None]:
    """What a checkpoint, run or export folder says about its model, without reading the
    weights: ``(folder holding model.safetensors, config, tokenizer, export record, quantization)``."""
    folder = resolve_model_dir(path)
    read = _read_export if is_export(folder) else _read_checkpoint
    return (folder, *read(folder))


def _read_checkpoint(folder: Path) -> tuple[Config, Any, dict, dict | None]:
    """The config, tokenizer, export record (the first export format's ``export.json``; else
    none) and quantization of a checkpoint folder."""
    for need in ("config.yaml", "tokenizer"):
        if not (folder / need).exists():
            raise VantageError(f"{folder}: missing {need}; a model folder holds {MODEL_FILE}, "
                               f"config.yaml and tokenizer/ (write one with `vantage export`)")
    # Only the plugins inference builds matter here (built, and so checked, with the model).
    cfg = load_config(folder / "config.yaml", registry=False)
    tokenizer = load_tokenizer(folder / "tokenizer")
    record = folder / FIRST_EXPORT_FILE
    info = json.loads(record.read_text()) if record.is_file() else {}
    return cfg, tokenizer, info, info.get("quantization")


def _read_export(folder: Path) -> tuple[Config, Any, dict, dict | None]:
    """The config, tokenizer, record (``config.json``'s ``vantage`` block without the config) and
    quantization (its ``quantization`` block) of an export in the current layout."""
    doc = _read_config_json(folder)
    block = doc["vantage"]
    tok_dir = folder / block.get("tokenizer", TOKENIZER_DIR)
    if not tok_dir.is_dir():
        raise VantageError(f"{folder}: missing {tok_dir.name}/ (the tokenizer that config.json names)")
    try:
        cfg = load_config(None, base=block["config"], registry=False)
    except ConfigError as exc:  # named as the export holds it, not as a config of defaults
        raise ConfigError(f"{folder / CONFIG_FILE}: vantage.config: {str(exc).removeprefix('(defaults): ')}") from None
    info = {k: v for k, v in block.items() if k != "config"}
    return cfg, load_tokenizer(tok_dir), info, doc.get("quantization")


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


def model_with_weights(cfg: Config, tokenizer: Any, folder: Path, quantization: dict | None,
                       quantized: str | None = None) -> Any:
    """The model ``cfg`` describes, quantized as ``quantization`` says (``bits``, ``group_size``)
    where given, with ``folder/model.safetensors`` loaded strictly, in eval mode.

    Quantized weights then run in the form ``quantized`` (default: ``cfg.inference.quantized``)
    chooses for this device: as stored, or dequantized to float once, here."""
    model = build_model(cfg.model, tokenizer)
    if quantization:
        quantize_model(model, bits=quantization["bits"], group_size=quantization["group_size"])
    load_weights(model, folder)
    if quantization and runtime_form(quantized or cfg.inference.quantized) == "dequantize":
        dequantize_model(model)
        mx.eval(model.parameters())  # once, now: the packed weights are freed before the first request
    model.eval()
    return model


def load_trainer_state(path: str | Path) -> dict:
    """The trainer state (``trainer_state.json``) of the checkpoint at ``path``."""
    return _read_state(resolve_checkpoint(path) / STATE_FILE)


def _read_state(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VantageError(f"{file}: unreadable trainer state ({exc}); resume from another checkpoint "
                           f"or start again with --overwrite") from None


def restore_checkpoint(path: str | Path, *, model: Any, optimizer: Any) -> dict:
    """Restore weights, optimizer and RNG state from a checkpoint; return its trainer state."""
    path = resolve_checkpoint(path)
    load_weights(model, path)
    optimizer.state = tree_unflatten(list(read_safetensors(path / "optimizer.safetensors").items()))
    optimizer.init(model.trainable_parameters())
    # MLX's key cannot be assigned back; the trainer reseeds from (run seed, step) before every
    # step instead, so restoring the step restores the random stream. The saved key records
    # where the stream stood.
    mx.eval(optimizer.state)
    return _read_state(path / STATE_FILE)


def restore_training_weights(path: str | Path, model: Any) -> None:
    """Put a checkpoint's raw training weights into ``model``, where it saved them beside their
    moving average; a checkpoint without them leaves ``model`` as it is."""
    file = resolve_checkpoint(path) / TRAINING_WEIGHTS
    if file.exists():
        model.update(tree_unflatten(list(read_safetensors(file).items())))
        mx.eval(model.parameters())


# ---------------------------------------------------------------------------- writing

def plugin_list(registry: Any = None) -> list[dict]:
    """Every registered plugin as ``{name, kind, distribution, version}``."""
    from vantage_core.plugins import registry as default_registry

    return [{"name": e.name, "kind": e.kind, "distribution": e.distribution, "version": e.version}
            for e in (registry or default_registry()).entries()]


def parameter_bytes(model: Any) -> int:
    """The bytes the model's parameters take, as stored (quantized layers packed)."""
    return sum(v.nbytes for _, v in tree_flatten(model.parameters()))


def save_checkpoint(path: str | Path, *, model: Any, optimizer: Any, trainer_state: dict,
                    config_yaml: str | None = None, plugins: list[dict] | None = None,
                    save_tokenizer: Callable[[Path], None] | None = None,
                    training_weights: dict | None = None) -> Path:
    """Write a checkpoint to ``path`` atomically (see the module docstring). ``training_weights``:
    the raw trainable weights where ``model`` holds their moving average (read back by
    :func:`restore_training_weights` to resume)."""
    path = Path(path)
    with new_folder(path, aside=path.with_name(path.name + ASIDE_SUFFIX), durable=True) as tmp:
        mx.save_safetensors(str(tmp / MODEL_FILE), dict(tree_flatten(model.parameters())))
        opt_state = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        mx.save_safetensors(str(tmp / "rng.safetensors"), {"mlx_key": mx.random.state[0]})
        if training_weights is not None:
            mx.save_safetensors(str(tmp / TRAINING_WEIGHTS), training_weights)
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        if plugins is not None:
            (tmp / "plugins.json").write_text(json.dumps(plugins, indent=2))
        if save_tokenizer is not None:
            save_tokenizer(tmp / "tokenizer")
        # Written last: a folder holding it is complete.
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
    return path


def save_export(folder: Path, model: Any, tokenizer: Any, cfg: Config, record: dict, plugins: list[dict],
                readme: str) -> None:
    """Write an export into ``folder``: the weights, the tokenizer, ``config.json`` (:func:`hf_config`
    of ``record``, the export's record), ``plugins.json`` and the model card ``readme``."""
    mx.save_safetensors(str(folder / MODEL_FILE), dict(tree_flatten(model.parameters())),
                        metadata=SAFETENSORS_METADATA)
    tokenizer.save(folder / TOKENIZER_DIR)
    (folder / CONFIG_FILE).write_text(json.dumps(hf_config(cfg, tokenizer, record), indent=2) + "\n")
    (folder / "plugins.json").write_text(json.dumps(plugins, indent=2) + "\n")
    (folder / "README.md").write_text(readme)


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
