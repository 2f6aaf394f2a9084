"""What ``vantage_core.api`` offers plugins: every name resolves, is public and is documented.
(That plugins import only it, and nothing in ``vantage_core`` imports it, is walked in
``tests/test_layers.py``.)"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types

import vantage_core.api as api


def test_every_api_name_resolves_and_is_public():
    """Each name in api.__all__ is an attribute of the module, listed once, without a leading underscore."""
    missing = [name for name in api.__all__ if not hasattr(api, name)]
    assert not missing, f"vantage_core.api.__all__ names what the module lacks: {', '.join(missing)}"
    assert len(api.__all__) == len(set(api.__all__)), "vantage_core.api.__all__ lists a name twice"
    private = [name for name in api.__all__ if name.startswith("_")]
    assert not private, f"vantage_core.api re-exports private names: {', '.join(private)}"


def has_own_docstring(obj: object) -> bool:
    """Whether a module, class or function carries a docstring written for it (not one inherited from
    its type, nor the signature a dataclass writes in place of a missing one)."""
    if not (inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj)):
        return False
    doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
    if not doc or not doc.strip():
        return False
    return not (dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("))


def described_names(doc: str) -> set[str]:
    """The names a module docstring describes: those of each entry line ``name``, ``name``: text."""
    described = set()
    for line in doc.splitlines():
        match = re.match(r"\s*((?:``\w+``,?\s*)+):\s+\S", line)
        if match:
            described |= set(re.findall(r"``(\w+)``", match.group(1)))
    return described


def undocumented(module: types.ModuleType) -> list[str]:
    """Each name of ``module.__all__`` that its docstring leaves out, or that has no docstring of its
    own and no description there, with what is missing."""
    doc = module.__doc__ or ""
    listed = set(re.findall(r"``(\w+)``", doc))
    described = described_names(doc)
    out = []
    for name in module.__all__:
        if name not in listed:
            out.append(f"{name}: not listed under any hook in the module docstring")
        elif not has_own_docstring(getattr(module, name)) and name not in described:
            out.append(f"{name}: no docstring of its own; describe it in the module docstring (``{name}``: what it is)")
    return out


def test_every_api_name_is_documented():
    """Every name in api.__all__ is listed under its hook in the module docstring, and has a docstring
    of its own or a description there."""
    missing = undocumented(api)
    assert not missing, "vantage_core/api.py:\n" + "\n".join(missing)


def test_the_documentation_check_finds_what_is_missing():
    """The check above reports a name the docstring omits, a constant and a docstring-less dataclass
    only listed, and passes a described constant and a documented function."""
    @dataclasses.dataclass
    class Bare:
        x: int

    def documented():
        """Says what it returns."""

    probe = types.ModuleType("probe", "Group\n    ``LIMIT``: the cap.\n    ``documented``, ``Bare``, ``SIZE``.\n")
    probe.__all__ = ["LIMIT", "documented", "Bare", "SIZE", "hidden"]
    probe.LIMIT, probe.SIZE, probe.hidden, probe.documented, probe.Bare = 3, 4, 5, documented, Bare
    assert [line.split(":")[0] for line in undocumented(probe)] == ["Bare", "SIZE", "hidden"]
