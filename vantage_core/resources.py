"""Files Vantage reads at run time, found the same way in a checkout and in an installed wheel.

In a checkout the configs sit in ``configs/`` at the top of the repository; a wheel carries the
same files as the data-only package ``vantage_core.configs`` (see ``pyproject.toml``). The
checkout's copy wins so that an editable install reads the files being edited.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from vantage_core.errors import ConfigError

_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def configs_dir() -> Path:
    """The folder of the shipped configs (the checkout's ``configs/``, else the wheel's)."""
    if _CHECKOUT_CONFIGS.is_dir():
        return _CHECKOUT_CONFIGS
    return Path(str(resources.files("vantage_core") / "configs"))


def config_path(name: str) -> Path:
    """The shipped config ``name`` (e.g. ``quickstart.yaml``), or a ConfigError listing the ones there are."""
    folder = configs_dir()
    path = folder / name
    if not path.is_file():
        known = sorted(str(p.relative_to(folder)) for p in folder.rglob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"{path}: no such shipped config; shipped: {', '.join(known) or '(none: reinstall vantage)'}")
    return path
