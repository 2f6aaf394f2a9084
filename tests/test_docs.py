"""Documentation keeps up with the code: every hook is documented and served, every command is in the README."""

from __future__ import annotations

import inspect
from pathlib import Path

from vantage_core import hookspecs
from vantage_core.cli import COMMANDS
from vantage_core.plugins import KINDS, registry

REPO = Path(__file__).resolve().parents[1]
HOOKS = [name for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def test_every_hook_spec_is_documented_and_typed():
    assert HOOKS
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        assert len(inspect.getdoc(spec) or "") > 40, f"{name} needs a docstring saying what to register"
        assert "register" in inspect.signature(spec).parameters, f"{name} must take the register callback"


def test_every_hook_is_a_kind_with_a_builtin_plugin():
    assert sorted(hook for hook, _ in KINDS.values()) == sorted(HOOKS)
    for kind in KINDS:
        builtin = [e for e in registry().entries(kind) if e.distribution == "vantage"]
        assert builtin, f"no built-in {kind}: the hook has nothing that exercises it"


def test_every_command_is_in_the_readme():
    readme = (REPO / "README.md").read_text()
    missing = [name for name in COMMANDS if f"vantage {name}" not in readme]
    assert not missing, f"README.md never shows: {', '.join('vantage ' + m for m in missing)}"


def test_contributing_walks_through_the_example_plugin():
    text = (REPO / "CONTRIBUTING.md").read_text()
    assert "examples/vantage-example-plugin" in text and "[project.entry-points.vantage]" in text
    assert (REPO / "examples" / "vantage-example-plugin" / "pyproject.toml").is_file()
