"""The layers of ``vantage_core``, lowest first, and a walk over every import that keeps them so.

A layer is a top-level module or package of ``vantage_core``. A module may import its own layer
and any layer on a lower level; never one on a higher level, and never a peer (another layer on
its own level). Every import counts: ``import x`` and ``from x import y``, at the top of a file or
inside a function. Plugins (``plugins/``, ``examples/vantage-example-plugin/``) sit above every
layer and import Vantage only through the top one, ``vantage_core.api``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vantage_core"
PLUGIN_ROOTS = [REPO / "plugins", REPO / "examples" / "vantage-example-plugin"]
PLUGIN_API = "vantage_core.api"
ROOT = "__init__"  # the package itself (``import vantage_core``: the BLAS and allocator set-up, ``hookimpl``)

# Lowest first. The base modules are ordered by what they import; ``sql`` is the floor of
# everything that touches a database; evaluate and inference are peers; analysis reads what
# training wrote (its metrics, for the report's curves). The server's static playground lives in
# ``inference``; what the commands doctor and quickstart run, in ``cli``. ``api`` re-exports what
# plugins need from the layers below it, and is for plugins only: nothing in vantage_core imports it.
LEVELS: list[tuple[str, ...]] = [
    ("errors", "allocator", "blas", "kernels", "hookspecs"),
    (ROOT, "textfiles", "resources", "folders", "plugins"),
    ("config",),
    ("sql",),
    ("data",),
    ("model",),
    ("evaluate", "inference"),
    ("train",),
    ("analysis",),
    ("cli",),
    ("api",),
]
LEVEL_OF = {layer: i for i, level in enumerate(LEVELS) for layer in level}


@dataclass(frozen=True)
class Import:
    """One import in ``vantage_core`` that crosses from one layer into another."""

    file: str  # relative to the repository
    line: int
    source: str  # the importing file's layer
    target: str  # the imported module's layer

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.source} imports {self.target}"


def top_level_names() -> set[str]:
    """Every top-level module and package of ``vantage_core`` (the package itself as ROOT)."""
    names = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    return names | {ROOT}


def layer_of_file(path: Path) -> str:
    """The layer of a ``.py`` file under ``vantage_core``."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ROOT if parts == ("__init__",) else parts[0]


def package_of_file(path: Path) -> list[str]:
    """The dotted package a file's relative imports start from, as parts."""
    parts = ["vantage_core", *path.relative_to(PACKAGE).with_suffix("").parts]
    return parts[:-1]


def imported_modules(node: ast.Import | ast.ImportFrom, path: Path) -> list[list[str]]:
    """The modules an import statement names, as dotted parts (``from a import b`` gives ``a.b``
    when ``b`` may be a module: its layer is decided by :func:`layer_of_module`)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".") for alias in node.names]
    package = package_of_file(path) if node.level else []
    base = package[:len(package) - node.level + 1]  # `from .. import x`: one up
    module = base + (node.module.split(".") if node.module else [])
    return [module + [alias.name] for alias in node.names]


def layer_of_module(parts: list[str], names: set[str]) -> str | None:
    """The layer a dotted module (or module + imported name) belongs to; None outside ``vantage_core``."""
    if not parts or parts[0] != "vantage_core":
        return None
    if len(parts) == 1 or parts[1] not in names:  # `import vantage_core`, `from vantage_core import hookimpl`
        return ROOT
    return parts[1]


def crossing_imports() -> list[Import]:
    """Every import in ``vantage_core`` from one layer into another, with its file and line."""
    names = top_level_names()
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = layer_of_file(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for parts in imported_modules(node, path):
                target = layer_of_module(parts, names)
                if target is not None and target != source:
                    found.append(Import(str(path.relative_to(PACKAGE.parent)), node.lineno, source, target))
    return sorted(set(found), key=lambda i: (i.file, i.line, i.target))


def upward_or_sideways(imports: list[Import]) -> list[str]:
    """Each import into a higher level or a peer, as ``file:line: a imports b`` with the levels."""
    out = []
    for imp in imports:
        src, dst = LEVEL_OF.get(imp.source), LEVEL_OF.get(imp.target)
        if src is None or dst is None:
            continue  # reported by test_every_module_has_a_layer
        if dst > src:
            out.append(f"{imp} (level {src} imports level {dst}, a higher one)")
        elif dst == src:
            out.append(f"{imp} (peers on level {src}: neither may import the other)")
    return out


def layer_circles(imports: list[Import]) -> list[list[str]]:
    """The groups of two or more layers that import one another round in a circle (the strongly
    connected components of the layer graph), each sorted."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        graph.setdefault(imp.source, set()).add(imp.target)
        graph.setdefault(imp.target, set())
    reach = {layer: reachable(graph, layer) for layer in graph}
    circles = {tuple(sorted(b for b in graph if b in reach[a] and a in reach[b]) or [a]) for a in graph}
    return [list(c) for c in sorted(circles) if len(c) > 1]


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """The layers ``start`` reaches through one or more imports."""
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        layer = todo.pop()
        if layer not in seen:
            seen.add(layer)
            todo.extend(graph[layer])
    return seen


def test_every_module_has_a_layer():
    """Every top-level module and package of vantage_core is placed in LEVELS, and every name
    LEVELS places exists."""
    names = top_level_names()
    unplaced = sorted(names - set(LEVEL_OF))
    assert not unplaced, (f"vantage_core/{', vantage_core/'.join(unplaced)}: in no layer; add each to LEVELS "
                          f"in tests/test_layers.py on the level of what it imports")
    missing = sorted(set(LEVEL_OF) - names)
    assert not missing, f"LEVELS in tests/test_layers.py names {', '.join(missing)}, which vantage_core lacks"


def test_no_import_goes_up_or_sideways():
    """No module imports a layer on a higher level, or a peer on its own level."""
    bad = upward_or_sideways(crossing_imports())
    assert not bad, "imports against the layer order (lowest first: " + " < ".join(
        "/".join(level) for level in LEVELS) + "):\n" + "\n".join(bad)


def test_no_circle_between_layers():
    """No two or more layers import one another round in a circle."""
    imports = crossing_imports()
    report = []
    for circle in layer_circles(imports):
        report.append(f"layers {', '.join(circle)} import one another:")
        report += [f"  {imp}" for imp in imports if imp.source in circle and imp.target in circle]
    assert not report, "\n".join(report)


def module_of(parts: list[str]) -> str | None:
    """The ``vantage_core`` module (file) a dotted import names: its longest prefix that is a
    ``.py`` file or a package; None outside ``vantage_core``."""
    if parts[0] != "vantage_core":
        return None
    for n in range(len(parts), 1, -1):
        path = PACKAGE.joinpath(*parts[1:n])
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts[:n])
    return None


def typing_only(tree: ast.AST) -> set[ast.AST]:
    """The imports under ``if TYPE_CHECKING:``, read by type checkers and never run."""
    blocks = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    return {n for block in blocks for stmt in block.body for n in ast.walk(stmt)}


def module_imports() -> dict[str, set[str]]:
    """Module -> the ``vantage_core`` modules it imports when it runs (every import, at the top or
    in a function; not those only type checkers read)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(["vantage_core", *path.relative_to(PACKAGE).with_suffix("").parts]).removesuffix(".__init__")
        targets = graph.setdefault(name, set())
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = typing_only(tree)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in skipped:
                targets |= {m for parts in imported_modules(node, path) if (m := module_of(parts)) and m != name}
    return graph


def module_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import one another, each sorted (a package importing its own
    submodules, as ``__init__`` files do, is not a circle unless a submodule imports it back)."""
    return sorted({tuple(sorted(m for m in graph if m in reachable(graph, start) and start in reachable(graph, m)))
                   for start in graph if start in reachable(graph, start)})


def test_no_circle_between_modules():
    """No two modules of ``vantage_core`` import each other, directly or through others, at the top
    of a file or inside a function."""
    circles = module_circles(module_imports())
    assert not circles, "modules that import one another:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_planted_circle():
    """The module walk catches a circle planted in a copy of the import graph."""
    graph = module_imports()
    graph["vantage_core.sql.names"].add("vantage_core.sql.policy")
    graph["vantage_core.sql.policy"].add("vantage_core.sql.names")
    assert ["vantage_core.sql.names", "vantage_core.sql.policy"] in [list(c) for c in module_circles(graph)]


def test_the_walk_sees_every_kind_of_import():
    """The walk resolves ``import x``, ``from x import y``, relative imports and imports inside
    functions to their layers (checked on source text placed, as if, in ``vantage_core/data/``)."""
    path = PACKAGE / "data" / "walk_probe.py"  # never written: only its place in the tree is used
    source = ("import vantage_core\nfrom vantage_core import plugins, hookimpl\nimport vantage_core.model.moe\n"
              "def f():\n    from ..inference import engine\n    from . import linking\n")
    tree = ast.parse(source)
    names = top_level_names()
    seen = [(node.lineno, layer_of_module(parts, names)) for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) for parts in imported_modules(node, path)]
    assert sorted(seen) == [(1, ROOT), (2, ROOT), (2, "plugins"), (3, "model"), (5, "inference"), (6, "data")]


def imports_past_the_api(tree: ast.AST, path: Path) -> list[tuple[int, str]]:
    """``(line, statement)`` for each import of ``vantage_core`` in a plugin's module other than
    ``import vantage_core.api`` and ``from vantage_core.api import ...`` (relative imports stay
    inside the plugin's own package)."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or getattr(node, "level", 0):
            continue
        for parts in imported_modules(node, path):
            via_api = node.module == PLUGIN_API if isinstance(node, ast.ImportFrom) else ".".join(parts) == PLUGIN_API
            if parts[0] == "vantage_core" and not via_api:
                found.append((node.lineno, ast.unparse(node)))
    return sorted(set(found))  # `from a import b, c` names two modules but is one statement


def plugin_files() -> list[Path]:
    """Every Python file of the built-in plugins and the example plugin."""
    return sorted(p for root in PLUGIN_ROOTS for p in root.rglob("*.py"))


def test_plugins_import_vantage_only_through_the_api():
    """Every import of vantage_core in plugins/ and examples/vantage-example-plugin/, at the top or
    inside a function, is of vantage_core.api."""
    files = plugin_files()
    assert any("vantage_example" in p.parts for p in files) and any("vantage_plugins" in p.parts for p in files)
    bad = [f"{path.relative_to(REPO)}:{line}: {statement}" for path in files
           for line, statement in imports_past_the_api(ast.parse(path.read_text(encoding="utf-8")), path)]
    assert not bad, ("plugins import Vantage only from vantage_core.api (add a name there when a plugin "
                     "needs it):\n" + "\n".join(bad))


def test_the_plugin_walk_finds_every_import_past_the_api():
    """The check above flags ``import vantage_core``, ``from vantage_core import x``, a submodule
    import and imports inside a function, and passes the api's own two forms, a module that only
    shares the prefix and a relative import."""
    source = ("import vantage_core\nfrom vantage_core import hookimpl\nimport vantage_core.model.moe\n"
              "from vantage_core.api import Routing\nimport vantage_core.api\nimport os, vantage_coreish\n"
              "def f():\n    from vantage_core.data.linking import Links, SchemaItem\n"
              "    from vantage_core import api\n    from . import sibling\n")
    path = REPO / "plugins" / "vantage_plugins" / "walk_probe.py"  # never written
    assert [line for line, _ in imports_past_the_api(ast.parse(source), path)] == [1, 2, 3, 8, 9]
