"""Plugins import Vantage only through ``vantage_core.api``; every name it offers resolves, is
public and is documented; and nothing in ``vantage_core`` imports it.

The walk reads every import statement of a file (``import x`` and ``from x import y``, at the top
or inside a function) with ``ast``, so an import hidden in a method counts as much as one at the top.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import types
from pathlib import Path

import vantage_core.api as api

REPO = Path(__file__).resolve().parents[1]
PLUGIN_ROOTS = [REPO / "plugins", REPO / "examples" / "vantage-example-plugin"]
CORE = REPO / "vantage_core"
PUBLIC = "vantage_core.api"


def imported_modules(node: ast.Import | ast.ImportFrom, package: list[str]) -> list[str]:
    """The dotted modules one import statement names (``from a import b`` gives ``a.b``, as ``b`` may
    be a module); ``package`` is the importing file's package, for relative imports."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = package[:len(package) - node.level + 1] if node.level else []
    module = ".".join(base + (node.module.split(".") if node.module else []))
    return [f"{module}.{alias.name}" for alias in node.names]


def vantage_imports(source: str, package: list[str]) -> list[tuple[int, str, str]]:
    """``(line, imported module, statement)`` for every import of ``vantage_core`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for module in imported_modules(node, package):
                if module == "vantage_core" or module.startswith("vantage_core."):
                    found.append((node.lineno, module, ast.unparse(node)))
    return sorted(found)


def through_the_api(module: str, statement: str) -> bool:
    """Whether an import of ``vantage_core`` goes through the api: ``import vantage_core.api`` or
    ``from vantage_core.api import ...`` (``module``: what the statement imports, as from
    :func:`imported_modules`)."""
    if statement.startswith("import "):
        return module == PUBLIC
    return statement.startswith(f"from {PUBLIC} import ")


def imports_past_the_api(source: str) -> list[tuple[int, str]]:
    """``(line, statement)`` for each import of ``vantage_core`` in plugin source that bypasses the api."""
    bad = [(line, stmt) for line, module, stmt in vantage_imports(source, []) if not through_the_api(module, stmt)]
    return list(dict.fromkeys(bad))  # `from a import b, c` names two modules but is one statement


def plugin_files() -> list[Path]:
    """Every Python file of the built-in plugins and the example plugin."""
    return sorted(p for root in PLUGIN_ROOTS for p in root.rglob("*.py"))


def test_plugins_import_vantage_only_through_the_api():
    """Every import of vantage_core in plugins/ and examples/vantage-example-plugin/ is of vantage_core.api."""
    files = plugin_files()
    assert any("vantage_example" in p.parts for p in files) and any("vantage_plugins" in p.parts for p in files)
    bad = [f"{path.relative_to(REPO)}:{line}: {stmt}"
           for path in files for line, stmt in imports_past_the_api(path.read_text(encoding="utf-8"))]
    assert not bad, ("plugins import Vantage only from vantage_core.api (add the name there if a plugin "
                     "needs it):\n" + "\n".join(bad))


def test_the_walk_finds_every_import_that_bypasses_the_api():
    """The check above flags ``import vantage_core``, ``from vantage_core import x``, a submodule
    import and one inside a function, and passes the api's own two forms."""
    source = ("import vantage_core\nfrom vantage_core import hookimpl\nimport vantage_core.model.moe\n"
              "from vantage_core.api import Routing\nimport vantage_core.api\nimport vantage_coreish\n"
              "def f():\n    from vantage_core.data.linking import Links, SchemaItem\n    from vantage_core import api\n")
    assert [line for line, _ in imports_past_the_api(source)] == [1, 2, 3, 8, 9]


def core_imports_of_the_api() -> list[str]:
    """``file:line: statement`` for each import of vantage_core.api inside vantage_core."""
    found = []
    for path in sorted(CORE.rglob("*.py")):
        if path == CORE / "api.py":
            continue
        package = ["vantage_core", *path.relative_to(CORE).with_suffix("").parts][:-1]
        for line, module, stmt in vantage_imports(path.read_text(encoding="utf-8"), package):
            if module == PUBLIC or module.startswith(PUBLIC + "."):
                found.append(f"{path.relative_to(REPO)}:{line}: {stmt}")
    return found


def test_nothing_in_vantage_core_imports_the_api():
    """vantage_core.api sits above the modules it re-exports: no module of vantage_core imports it."""
    bad = core_imports_of_the_api()
    assert not bad, "vantage_core.api is for plugins; import the module that defines the name:\n" + "\n".join(bad)


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
