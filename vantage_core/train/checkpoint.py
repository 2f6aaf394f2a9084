"""Checkpoints, written so that a crash at any moment leaves a loadable one.

A checkpoint is a folder::

    model.safetensors      every parameter of the model (trainable and frozen)
    optimizer.safetensors  the optimizer's state (step, moments), flattened
    rng.safetensors        MLX's random key at the save (the stream is reseeded per step)
    trainer_state.json     step, batches consumed, best validation score, ...
    config.yaml            the resolved config
    plugins.json           name, kind, distribution and version of every registered plugin
    tokenizer/             the decoder's tokenizer
    training_weights.safetensors  the raw trainable weights, where model.safetensors holds their
                           moving average (``train.ema_decay``); only for --resume

It is written as every output folder is (:func:`vantage_core.folders.new_folder`): first in
full to a temporary sibling folder and fsync'ed; then the old folder is
renamed aside, the new one renamed into place, and the old one deleted. Each rename is atomic,
and :func:`resolve_checkpoint` falls back to the renamed-aside folder, so an interruption
between the two renames loses nothing. A temporary folder left by a save that was killed is
removed by the next save beside it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from vantage_core.errors import VantageError
from vantage_core.folders import new_folder

STATE_FILE = "trainer_state.json"
ASIDE_SUFFIX = ".old"
TRAINING_WEIGHTS = "training_weights.safetensors"


def plugin_list(registry: Any = None) -> list[dict]:
    """Every registered plugin as ``{name, kind, distribution, version}``."""
    from vantage_core.plugins import registry as default_registry

    return [{"name": e.name, "kind": e.kind, "distribution": e.distribution, "version": e.version}
            for e in (registry or default_registry()).entries()]


def save_checkpoint(path: str | Path, *, model: Any, optimizer: Any, trainer_state: dict,
                    config_yaml: str | None = None, plugins: list[dict] | None = None,
                    save_tokenizer: Callable[[Path], None] | None = None,
                    training_weights: dict | None = None) -> Path:
    """Write a checkpoint to ``path`` atomically (see the module docstring). ``training_weights``:
    the raw trainable weights where ``model`` holds their moving average (read back by
    :func:`restore_training_weights` to resume)."""
    path = Path(path)
    with new_folder(path, aside=path.with_name(path.name + ASIDE_SUFFIX), durable=True) as tmp:
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
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


def resolve_checkpoint(path: str | Path) -> Path:
    """The complete checkpoint at ``path``, or the one renamed aside by an interrupted save."""
    path = Path(path)
    for candidate in (path, path.with_name(path.name + ASIDE_SUFFIX)):
        if (candidate / STATE_FILE).exists() and (candidate / "model.safetensors").exists():
            return candidate
    raise VantageError(f"{path}: no complete checkpoint here (expected {STATE_FILE} and "
                       f"model.safetensors)")


def load_trainer_state(path: str | Path) -> dict:
    return _read_state(resolve_checkpoint(path) / STATE_FILE)


def _read_state(file: Path) -> dict:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VantageError(f"{file}: unreadable trainer state ({exc}); resume from another checkpoint "
                           f"or start again with --overwrite") from None


def read_safetensors(file: str | Path) -> dict:
    """The arrays of a ``.safetensors`` file; a truncated or corrupt one is a clear error."""
    try:
        return mx.load(str(file))
    except (RuntimeError, ValueError, OSError) as exc:
        reason = str(exc).split("] ", 1)[-1]  # MLX prefixes its function name
        raise VantageError(f"{file}: cannot be read, truncated or corrupt ({reason}); resume from another "
                           f"checkpoint or start again with --overwrite") from None


def load_weights(model: Any, path: str | Path) -> None:
    """Load a checkpoint's weights into ``model`` (every parameter must match)."""
    load_weights_file(model, resolve_checkpoint(path))


def load_weights_file(model: Any, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into ``model`` strictly (checkpoints and exports alike)."""
    file = Path(folder) / "model.safetensors"
    weights = read_safetensors(file)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise VantageError(f"{file} does not fit the model its config.yaml builds: {exc}") from None
    mx.eval(model.parameters())


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
