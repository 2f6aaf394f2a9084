"""Documentation keeps up with the code: every hook is documented and served, every command is in the
README, every command the README and docs/ show parses, and no file cites an issue number."""

from __future__ import annotations

import inspect
import itertools
import re
import shlex
from pathlib import Path

import click

from vantage_core import hookspecs
from vantage_core.cli import COMMANDS, cli
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


# ---- the commands the documentation shows --------------------------------------------------------

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.M | re.S)
SHELL_BLOCKS = {"bash", "sh", "shell", "console"}
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
SHELL_WORDS = {"do", "then", "else", "time", "nice", "exec"}
NOT_PARSED_HERE = (click.Path, click.File)  # files the reader makes first: existence is not checked


def shown_shell_lines(markdown: str) -> list[str]:
    """Every line of a shell code block (continuations joined), and each `$ ` prompt line of any other block."""
    lines = []
    for lang, body in FENCE.findall(markdown):
        body = body.replace("\\\n", " ")
        if lang in SHELL_BLOCKS:
            lines += [line.removeprefix("$ ") for line in body.splitlines()]
        elif lang in ("", "text"):
            lines += [line[2:] for line in body.splitlines() if line.startswith("$ ")]
    return [line for line in lines if line.strip()]


def vantage_argvs(markdown: str) -> list[list[str]]:
    """The arguments after `vantage` of every `vantage` command the code blocks of a Markdown text show."""
    argvs = []
    for line in shown_shell_lines(markdown):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        segment: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(lexer.punctuation_chars):  # &&, ;, |, & end a command
                words = list(itertools.dropwhile(lambda w: w in SHELL_WORDS or ENV_ASSIGNMENT.match(w), segment))
                if words[:1] == ["vantage"]:
                    argvs.append(words[1:])
                segment = []
            else:
                segment.append(token)
    return argvs


def _value_problem(ctx: click.Context, param: click.Parameter, value) -> str | None:
    """Why click would refuse this parsed value of a parameter (missing, or outside its type), or None."""
    if value in (None, ()):
        return f"missing {param.get_error_hint(ctx)}" if param.required else None
    if isinstance(param.type, NOT_PARSED_HERE):
        return None
    try:
        param.type_cast_value(ctx, value)
    except click.BadParameter as exc:
        return f"{param.get_error_hint(ctx)}: {exc.message}"
    return None


def argv_problem(argv: list[str]) -> str | None:
    """Why `vantage` would refuse these arguments (unknown command or option, a missing or invalid
    value, extra arguments), found by the CLI's own parser without running the command; None if none."""
    command, name, args, ctx = cli, "vantage", list(argv), None
    while True:
        ctx = click.Context(command, info_name=name, parent=ctx)
        try:
            opts, rest, _ = command.make_parser(ctx).parse_args(args)
        except click.UsageError as exc:
            return f"{ctx.command_path}: {exc.format_message()}"
        for param in command.params:
            problem = _value_problem(ctx, param, opts.get(param.name))
            if problem:
                return f"{ctx.command_path}: {problem}"
        if not isinstance(command, click.Group):
            return f"{ctx.command_path}: unexpected arguments {rest}" if rest else None
        if not rest:
            return f"{ctx.command_path}: no subcommand given"
        name, args = rest[0], rest[1:]
        command = command.get_command(ctx, name)
        if command is None:
            return f"{ctx.command_path}: no such command {name!r}"


def _problems(markdown: str) -> list[str]:
    return [f"vantage {shlex.join(argv)}\n    -> {problem}"
            for argv in vantage_argvs(markdown) if (problem := argv_problem(argv))]


def test_every_vantage_command_in_the_readme_parses():
    """Each `vantage ...` line of the README's code blocks, exactly as shown, is accepted by the CLI's parser."""
    readme = (REPO / "README.md").read_text()
    argvs = vantage_argvs(readme)
    assert ["quickstart"] in argvs, "the README's first command, `vantage quickstart`, was not found"
    assert len({argv[0] for argv in argvs}) >= 5, argvs
    problems = _problems(readme)
    assert not problems, "README.md shows commands the CLI refuses:\n" + "\n".join(problems)


def test_every_vantage_command_in_the_docs_parses():
    """The same for the pages of docs/."""
    problems = [f"{page.relative_to(REPO)}: {p}" for page in sorted((REPO / "docs").rglob("*.md"))
                for p in _problems(page.read_text())]
    assert not problems, "docs/ shows commands the CLI refuses:\n" + "\n".join(problems)


def test_the_command_check_finds_what_the_cli_refuses():
    """The check behind the two tests above reports an unknown option, command or choice, a missing
    option or value, and extra arguments, and accepts the same lines written correctly."""
    bad = {
        "vantage train --confg configs/tiny.yaml": "--confg",
        "vantage trian --config configs/tiny.yaml": "trian",
        "vantage data perpare": "perpare",
        "vantage export -m runs/x -o out --quantize 3": "--quantize",
        "vantage generate --db x.sqlite 'How many?'": "--checkpoint",
        "vantage serve -m runs/x --port": "--port",
        "vantage plot runs/a runs/b": "unexpected",
        "FOO=1 vantage doctor --size big": "--size",
    }
    block = "```bash\n" + "\n".join(bad) + "\n```\n"
    problems = _problems(block)
    assert len(problems) == len(bad), problems
    for (line, named), problem in zip(bad.items(), problems):
        assert named in problem, (line, problem)
    good = ("```bash\nvantage train --config configs/tiny.yaml --set run.seed=1 && vantage plot runs/tiny\n"
            "for s in 1 2; do OPENBLAS_NUM_THREADS=1 vantage train \\\n  --set run.seed=$s & done; wait\n```\n"
            "```\n$ vantage export -m runs/x -o out --quantize 8   # a comment\nnot a command: vantage --bogus\n```\n")
    assert vantage_argvs(good) == [["train", "--config", "configs/tiny.yaml", "--set", "run.seed=1"],
                                   ["plot", "runs/tiny"], ["train", "--set", "run.seed=$s"],
                                   ["export", "-m", "runs/x", "-o", "out", "--quantize", "8"]]
    assert _problems(good) == []


# ---- no issue numbers -----------------------------------------------------------------------------

ISSUE_NUMBER = re.compile(r"\bissues?[\s#-]*\d", re.I)
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh", ".cpp", ".h", ".html", ".js",
                 ".css", ".json", ".ipynb", ".cfg", ".ini"}


def _text_files(top: Path) -> list[Path]:
    files = [top] if top.is_file() else sorted(top.rglob("*"))
    return [f for f in files if f.is_file() and f.suffix in TEXT_SUFFIXES and "__pycache__" not in f.parts]


def test_no_issue_numbers_in_code_tests_or_docs():
    """Code, tests, docs and benchmarks say what a thing does or checks, never which issue asked for it."""
    tops = ["vantage_core", "plugins", "tests", "docs", "benchmarks", "README.md"]
    files = [f for top in tops for f in _text_files(REPO / top)]
    assert len(files) > 100, "the walk found too few files to mean anything"
    hits = [f"{f.relative_to(REPO)}:{n}: {line.strip()[:100]}"
            for f in files for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1)
            if ISSUE_NUMBER.search(line)]
    assert not hits, "issue numbers (say what the thing does instead):\n" + "\n".join(hits)


def test_the_readme_is_at_most_200_lines():
    """README.md stays a short page: 200 lines at most (the details live in docs/)."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move details to docs/ to keep it at 200 or fewer"
