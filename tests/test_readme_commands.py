"""The commands README.md shows run as shown: each `$ vantage ...` line of a shown-output block prints
the lines shown under it, and the tour's commands run to completion on a tiny model and a database
made here, so a README command that stops working fails a test.

Substitutions (everything else runs exactly as the README writes it, in a temporary folder as cwd):

| README                                   | here                                                         |
|------------------------------------------|--------------------------------------------------------------|
| configs/spider.yaml                      | tests/fixtures/train_tiny.yaml, plus `--set train.steps=2`   |
| configs/quickstart.yaml (the sweep base) | tests/fixtures/train_tiny.yaml with train.steps: 2           |
| ../shared/data/spider                    | a Spider-format folder over one database made here          |
| runs/spider_seed1, runs/spider_seed2     | trained and evaluated by the README's lines with the seed changed |
| shop.sqlite, shop_pairs.jsonl            | a small database, the README's notes beside it, two pairs    |
| vantage adapt                            | plus `--steps 2 --synthetic 8`                               |
| my.yaml                                  | a config whose line 7 is the router the comment shows        |

Not run, only parse-checked by test_docs.py: `vantage quickstart` (about 2 minutes of training) and
`vantage serve` (it serves until interrupted; tests/test_serve_*.py drive the same app in process)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from infer_fixture import make_db
from test_docs import FENCE, vantage_argvs
from vantage_core.cli import main
from vantage_core.errors import VantageError

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
TINY = REPO / "tests" / "fixtures" / "train_tiny.yaml"
NOT_RUN = {"quickstart": "trains for about 2 minutes", "serve": "serves until interrupted"}
# doctor's lines that depend on the machine: compared by their label (the text before the column gap)
MACHINE_LINES = {"python", "mlx", "blas loading", "blas active", "sgemm 1024", "kernels", "precision", "quantized"}
MY_YAML = "model:\n  d_model: 256\n  n_layers: 4\n  n_heads: 4\n  num_experts: 8\n  expert_hidden: 512\n  router: {}\n"


def shown_outputs() -> list[tuple[str, str, list[str]]]:
    """(command, its `# comment`, the output lines shown under it) for each `$ vantage` line of a
    block that is not a shell block."""
    shown = []
    for lang, body in FENCE.findall(README):
        if lang not in ("", "text") or not body.startswith("$ vantage "):
            continue
        for line in body.splitlines():
            if line.startswith("$ vantage "):
                command, _, comment = line[2:].partition("#")
                shown.append((command.strip(), comment.strip(), []))
            elif line.strip():
                shown[-1][2].append(line.rstrip())
    return shown


def label(line: str) -> str:
    """The label of a doctor line: the text before the first gap of two or more spaces."""
    return re.split(r"\s{2,}", line.strip())[0]


def in_order(wanted: list[str], got: list[str]) -> list[str]:
    """The lines of ``wanted`` that are not found in ``got`` in the same order."""
    rest, missing = iter(got), []
    for line in wanted:
        if not any(line == g for g in rest):
            missing.append(line)
            rest = iter(got)
    return missing


class Ran:
    """What a command printed (stdout and stderr) and its exit status."""

    def __init__(self, argv: list[str]):
        runner = CliRunner()
        with runner.isolation() as (out, err, _):
            try:
                main(argv)  # what the `vantage` script runs: errors as one line, not a traceback
                self.exit_code = 0
            except SystemExit as exc:
                self.exit_code = exc.code if isinstance(exc.code, int) else 1
        self.output = out.getvalue().decode() + err.getvalue().decode()


def invoke(argv: list[str]) -> Ran:
    return Ran(argv)


def ran_or_the_model_sql_failed(result: Ran) -> bool:
    """Exit 0, or exit 1 because the SQL the model wrote did not run: a model trained for 2 steps
    writes SQL a database may refuse, which is the model's answer, not the command failing."""
    return result.exit_code == 0 or (result.exit_code == 1 and "error: the SQL did not run" in result.output)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A folder holding a copy of configs/, made the cwd, with its own data cache."""
    work = tmp_path / "work"
    shutil.copytree(REPO / "configs", work / "configs")
    monkeypatch.chdir(work)
    monkeypatch.setenv("VANTAGE_CACHE", str(tmp_path / "cache"))
    return work


def test_the_readme_shows_outputs_for_these_commands():
    """The shown-output blocks this file runs are all still in the README."""
    commands = [c.split()[1] for c, _, _ in shown_outputs()]
    assert sorted(set(commands)) == ["config", "doctor", "plugins"], commands


@pytest.mark.parametrize("command,comment,lines", shown_outputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_a_shown_command_prints_what_the_readme_shows(workdir, command, comment, lines):
    """Running the command prints the README's lines in the same order (doctor's machine-dependent
    lines by their label only; trailing spaces ignored)."""
    if comment.startswith("router:"):
        (workdir / "my.yaml").write_text(MY_YAML.format(comment.removeprefix("router:").strip()))
    result = invoke(shlex.split(command)[1:])
    got = [line.rstrip() for line in result.output.splitlines()]
    if command == "vantage doctor":
        fixed = [line for line in lines if label(line) not in MACHINE_LINES]
        assert not in_order(fixed, got), result.output
        assert not in_order([label(line) for line in lines], [label(line) for line in got]), result.output
    else:
        assert not in_order(lines, got), f"{command}: README lines missing from the output:\n{result.output}"
    assert (result.exit_code != 0) == any(line.startswith("error:") for line in lines), result.output


# ---- the tour: train, evaluate, look inside, ask, export, adapt ------------------------------------

def make_spider_release(folder: Path) -> None:
    """A Spider-format folder (tables.json, train_spider.json, database/) over concert_singer."""
    db = folder / "database" / "concert_singer" / "concert_singer.sqlite"
    db.parent.mkdir(parents=True)
    make_db(db)
    columns = [[-1, "*"], [0, "singer_id"], [0, "name"], [0, "country"], [0, "age"],
               [1, "concert_id"], [1, "concert_name"], [1, "year"], [1, "singer_id"]]
    tables = [{"db_id": "concert_singer", "table_names_original": ["singer", "concert"],
               "table_names": ["singer", "concert"], "column_names_original": columns,
               "column_names": [[t, c.replace("_", " ")] for t, c in columns],
               "column_types": ["text", "number", "text", "text", "number", "number", "text", "number", "number"],
               "primary_keys": [1, 5], "foreign_keys": [[8, 1]]}]
    (folder / "tables.json").write_text(json.dumps(tables))
    pairs = [("How many singers are there?", "SELECT count(*) FROM singer"),
             ("What are the names of all singers?", "SELECT name FROM singer"),
             ("List the names of singers from France.", "SELECT name FROM singer WHERE country = 'France'"),
             ("How many concerts are there?", "SELECT count(*) FROM concert")]
    rows = [{"db_id": "concert_singer", "question": q, "query": s} for q, s in pairs]
    (folder / "train_spider.json").write_text(json.dumps(rows))


SHOP = ("CREATE TABLE Products (ProductID INTEGER PRIMARY KEY, ProductName TEXT, Discontinued TEXT);"
        "CREATE TABLE Orders (OrderID INTEGER PRIMARY KEY, ShipCountry TEXT,"
        " ProductID INTEGER REFERENCES Products(ProductID));"
        "INSERT INTO Products VALUES (1, 'Chai', '0'), (2, 'Chang', '1'), (3, 'Tofu', '0');"
        "INSERT INTO Orders VALUES (10, 'France', 1), (11, 'Germany', 2), (12, 'France', 3), (13, 'Spain', 1);")


def readme_notes() -> str:
    """The notes file the README shows (its yaml block that starts with the notes file's name)."""
    blocks = [body for lang, body in FENCE.findall(README) if lang == "yaml" and body.startswith("# shop.notes.yaml")]
    assert len(blocks) == 1, "the README shows one shop.notes.yaml"
    return blocks[0]


def make_shop(work: Path) -> None:
    """shop.sqlite with the README's notes beside it, and shop_pairs.jsonl, as the README's
    own-database lines name them."""
    import sqlite3

    con = sqlite3.connect(work / "shop.sqlite")
    con.executescript(SHOP)
    con.commit()
    con.close()
    (work / "shop.notes.yaml").write_text(readme_notes())
    pairs = [{"question": "How many orders are there?", "sql": "SELECT count(*) FROM Orders"},
             {"question": "List the ProductName of Products.", "sql": "SELECT ProductName FROM Products"}]
    (work / "shop_pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))


def test_the_readme_notes_fit_the_shop_they_describe(tmp_path):
    """The README's notes file reads without error against the database it describes, and a
    mistake in it would be caught (a misspelled column is refused)."""
    from vantage_core.data.notes import read_notes
    from vantage_core.sql.sqlite_file import schema_from_sqlite

    make_shop(tmp_path)
    schema = schema_from_sqlite(tmp_path / "shop.sqlite")
    notes = read_notes(tmp_path / "shop.notes.yaml", schema)
    assert notes.tables
    (tmp_path / "bad.notes.yaml").write_text(readme_notes().replace("ShipCountry:", "ShipCountyr:"))
    with pytest.raises(VantageError, match="ShipCountyr"):
        read_notes(tmp_path / "bad.notes.yaml", schema)


def test_the_config_commands_run_as_shown(workdir):
    """The Configs section's `vantage config show` and `vantage config validate` lines exit 0."""
    section = README.split("## Configs", 1)[1].split("## Plugins", 1)[0]
    argvs = [a for a in vantage_argvs(section) if "my.yaml" not in a]
    assert {a[1] for a in argvs} == {"show", "validate"}, argvs
    for argv in argvs:
        result = invoke(argv)
        assert result.exit_code == 0, f"vantage {shlex.join(argv)}\n{result.output}"


def tour_argvs() -> list[list[str]]:
    """The `vantage` commands of the README's tour code blocks, as shown."""
    tour = README.split("## A tour of the commands", 1)[1].split("### Data", 1)[0]
    return vantage_argvs(tour)


def substituted(argv: list[str]) -> list[str]:
    """``argv`` with the substitutions of the table above."""
    if argv[0] == "train":
        argv = [a if a != "configs/spider.yaml" else str(TINY) for a in argv] + ["--set", "train.steps=2"]
    if argv[0] == "adapt":
        argv = argv + ["--steps", "2", "--synthetic", "8"]
    return argv


def with_seed(argv: list[str], seed: int) -> list[str]:
    return [a.replace("seed=0", f"seed={seed}").replace("spider_seed0", f"spider_seed{seed}") for a in argv]


@pytest.mark.slow
def test_the_tour_commands_run_as_shown(workdir, monkeypatch):
    """Each command of the tour exits 0 and writes what it says (in the order shown; seeds 1 and 2
    are trained and evaluated by the README's own lines with the seed changed, for the report)."""
    data = workdir.parent / "shared" / "data"
    make_spider_release(data / "spider")
    monkeypatch.setenv("VANTAGE_SHARED_DATA", str(data))
    make_shop(workdir)
    (workdir / "configs" / "quickstart.yaml").write_text(TINY.read_text().replace("steps: 6", "steps: 2"))
    argvs = tour_argvs()
    assert {a[0] for a in argvs} >= {"train", "plot", "evaluate", "analyze", "report", "sweep", "generate",
                                     "serve", "export", "adapt"}, argvs
    for argv in argvs:
        if argv[0] in NOT_RUN:
            continue
        if argv[0] == "report":
            for seed in (1, 2):
                for before in (a for a in argvs if a[0] in ("train", "evaluate")):
                    assert invoke(with_seed(substituted(before), seed)).exit_code == 0
        result = invoke(substituted(argv))
        ok = ran_or_the_model_sql_failed(result) if argv[0] == "generate" else result.exit_code == 0
        assert ok, f"vantage {shlex.join(argv)}\n{result.output}"
    for written in ("runs/spider_seed0/checkpoints/best", "runs/spider_seed0/plots/loss.png", "runs/spider_seed0/eval",
                    "reports/spider", "exports/spider_seed0/model.safetensors", "runs/shop_seed0/config.yaml"):
        assert (workdir / written).exists(), written
