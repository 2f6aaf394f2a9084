"""The wheel carries every package and the files `vantage` reads at run
time (configs, playground, type marker, license), and the declared dependencies are the ones the
code uses. .ci/wheel-smoke installs that wheel into a fresh virtual environment and runs
`vantage plugins`, `vantage doctor` and a quickstart from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def source_packages() -> set[str]:
    """Every folder with an __init__.py under vantage_core/ and plugins/vantage_plugins/."""
    found = set()
    for base, prefix in ((ROOT, ""), (ROOT / "plugins", "")):
        for init in base.glob("vantage_*/**/__init__.py"):
            found.add(prefix + ".".join(init.parent.relative_to(base).parts))
    return found


def test_every_package_is_listed_for_the_wheel():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert source_packages() <= listed, f"add to pyproject.toml: {sorted(source_packages() - listed)}"
    config_folders = {"vantage_core.configs." + ".".join(d.relative_to(ROOT / "configs").parts)
                      for d in (ROOT / "configs").rglob("*") if d.is_dir() and any(d.glob("*.yaml"))}
    assert {"vantage_core.configs", *config_folders} <= listed, f"add to pyproject.toml: {sorted(config_folders - listed)}"


def test_dependency_hygiene():
    deps = PYPROJECT["project"]["dependencies"]
    names = {d.split(">")[0].split("<")[0].split("[")[0].split(";")[0].strip().lower() for d in deps}
    assert not names & {"importlib-metadata", "safetensors"}  # declared but never imported
    assert PYPROJECT["project"]["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert any("platform_machine == 'arm64'" in d for d in deps)
    assert "cuda" in PYPROJECT["project"]["optional-dependencies"]
    for d in deps:  # every 0.x requirement has an upper bound
        if ">=0." in d:
            assert "<" in d, d
    assert (ROOT / "vantage_core" / "py.typed").is_file()


def test_the_configs_resolve_from_the_checkout():
    from vantage_core.errors import ConfigError
    from vantage_core.cli.quickstart import CONFIG
    from vantage_core.resources import config_path

    assert CONFIG == ROOT / "configs" / "quickstart.yaml" == config_path("quickstart.yaml")
    with pytest.raises(ConfigError, match="no such shipped config; shipped: .*quickstart.yaml"):
        config_path("nope.yaml")


@pytest.mark.slow
def test_the_wheel_carries_the_runtime_files(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (wheel,) = tmp_path.glob("vantage-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("vantage_core/configs/quickstart.yaml", "vantage_core/configs/tiny.yaml",
                 "vantage_core/configs/sweeps/routers.yaml", "vantage_core/inference/playground/static/index.html",
                 "vantage_core/inference/playground/static/app.js", "vantage_core/py.typed",
                 "vantage_plugins/routers/__init__.py", "vantage_core/inference/openai_api.py"):
        assert need in names, need
    assert any(n.endswith("licenses/LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "License-Expression: MIT" in meta
