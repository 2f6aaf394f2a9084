"""Checkpoints, written so that a crash at any moment leaves a loadable one.

A checkpoint is a folder::

    model.safetensors      every parameter of the model (trainable and frozen)
    optimizer.safetensors  the optimizer's state (step, moments), flattened
    rng.safetensors        MLX's random key at the save (the stream is reseeded per step)
    trainer_state.json     step, batches consumed, best validation score, ...
    config.yaml            the resolved config
    plugins.json           name, kind, distribution and version of every registered plugin
    tokenizer/             the decoder's tokenizer

It is first written in full to a temporary sibling folder and fsync'ed; then the old folder is
renamed aside, the new one renamed into place, and the old one deleted. Each rename is atomic,
and :func:`resolve_checkpoint` falls back to the renamed-aside folder, so an interruption
between the two renames loses nothing.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

from vantage_core.errors import VantageError

STATE_FILE = "trainer_state.json"
ASIDE_SUFFIX = ".old"


def plugin_list(registry: Any = None) -> list[dict]:
    """Every registered plugin as ``{name, kind, distribution, version}``."""
    from vantage_core.plugins import registry as default_registry

    return [{"name": e.name, "kind": e.kind, "distribution": e.distribution, "version": e.version}
            for e in (registry or default_registry()).entries()]


def _fsync_tree(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, *, model: Any, optimizer: Any, trainer_state: dict,
                    config_yaml: str | None = None, plugins: list[dict] | None = None,
                    save_tokenizer: Callable[[Path], None] | None = None) -> Path:
    """Write a checkpoint to ``path`` atomically (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        mx.save_safetensors(str(tmp / "model.safetensors"), dict(tree_flatten(model.parameters())))
        opt_state = dict(tree_flatten(optimizer.state))
        mx.save_safetensors(str(tmp / "optimizer.safetensors"), opt_state)
        mx.save_safetensors(str(tmp / "rng.safetensors"), {"mlx_key": mx.random.state[0]})
        if config_yaml is not None:
            (tmp / "config.yaml").write_text(config_yaml)
        if plugins is not None:
            (tmp / "plugins.json").write_text(json.dumps(plugins, indent=2))
        if save_tokenizer is not None:
            save_tokenizer(tmp / "tokenizer")
        # Written last: a folder holding it is complete.
        (tmp / STATE_FILE).write_text(json.dumps(trainer_state, indent=2))
        _fsync_tree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    aside = path.with_name(path.name + ASIDE_SUFFIX)
    if aside.exists() and path.exists():  # a leftover from an earlier interrupted swap
        shutil.rmtree(aside)
    # (an aside without ``path`` is the only complete copy: it stays until the new one is in place)
    if path.exists():
        os.replace(path, aside)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)
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
    return json.loads((resolve_checkpoint(path) / STATE_FILE).read_text())


def load_weights(model: Any, path: str | Path) -> None:
    """Load a checkpoint's weights into ``model`` (every parameter must match)."""
    load_weights_file(model, resolve_checkpoint(path))


def load_weights_file(model: Any, folder: str | Path) -> None:
    """Load ``folder/model.safetensors`` into ``model`` strictly (checkpoints and exports alike)."""
    file = Path(folder) / "model.safetensors"
    try:
        model.load_weights(str(file), strict=True)
    except ValueError as exc:
        raise VantageError(f"{file} does not fit the model its config.yaml builds: {exc}") from None
    mx.eval(model.parameters())


def restore_checkpoint(path: str | Path, *, model: Any, optimizer: Any) -> dict:
    """Restore weights, optimizer and RNG state from a checkpoint; return its trainer state."""
    path = resolve_checkpoint(path)
    load_weights(model, path)
    optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
    optimizer.init(model.trainable_parameters())
    # MLX's key cannot be assigned back; the trainer reseeds from (run seed, step) before every
    # step instead, so restoring the step restores the random stream. The saved key records
    # where the stream stood.
    mx.eval(optimizer.state)
    return json.loads((path / STATE_FILE).read_text())
