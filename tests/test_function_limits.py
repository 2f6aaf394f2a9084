"""Every function in ``vantage_core/`` and ``plugins/`` stays readable: at most 80 lines (from its
``def`` line to its last line) and at most 8 parameters (``self``/``cls`` not counted; ``*args``
and ``**kwargs`` one each)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 80
MAX_PARAMS = 8


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """The parameters a reader has to keep in mind: all of them but a method's self or cls."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    count = len(names) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    return count - (names[:1] in (["self"], ["cls"]))


def offenders(source: str, filename: str) -> list[str]:
    """``file:line name: what is over`` for each function in ``source`` over a limit."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        lines, params = node.end_lineno - node.lineno + 1, parameter_count(node)
        if lines > MAX_LINES:
            found.append(f"{filename}:{node.lineno} {node.name}: {lines} lines (at most {MAX_LINES})")
        if params > MAX_PARAMS:
            found.append(f"{filename}:{node.lineno} {node.name}: {params} parameters (at most {MAX_PARAMS})")
    return found


def test_no_function_is_over_80_lines_or_8_parameters():
    files = sorted((REPO / "vantage_core").rglob("*.py")) + sorted((REPO / "plugins").rglob("*.py"))
    assert len(files) > 50, "the source folders were not found"
    found = [o for f in files for o in offenders(f.read_text(), str(f.relative_to(REPO)))]
    assert not found, "split these into small named helpers or gather parameters in a dataclass:\n" + \
        "\n".join(found)


def test_the_check_counts_lines_and_parameters_as_documented():
    """The check flags a function of 81 lines and one of 9 parameters, and passes the limits."""
    body = "\n".join(f"    x{i} = {i}" for i in range(79))
    source = (f"def long_one():\n{body}\n    return x0\n"  # 81 lines
              f"def short_one():\n{body}\n"  # 80 lines
              "def many(a, b, c, d, e, f, g, *args, **kwargs): pass\n"  # 9
              "class K:\n"
              "    def method(self, a, b, c, d, e, f, g, h): pass\n"  # 8 besides self
              "    @classmethod\n"
              "    def build(cls, a, b, c, d, e, f, g, *, h, i): pass\n")  # 9 besides cls
    assert offenders(source, "m.py") == [
        "m.py:1 long_one: 81 lines (at most 80)",
        "m.py:162 many: 9 parameters (at most 8)",
        "m.py:166 build: 9 parameters (at most 8)",
    ]
