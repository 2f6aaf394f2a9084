"""Every file in configs/ passes `vantage config validate`, every sweep expands into valid runs,
and every `--set` of the Spider script names a real field with a valid value."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from vantage_core.cli import cli
from vantage_core.config import expand_sweep, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SWEEPS = sorted((REPO / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_validates(path):
    res = CliRunner().invoke(cli, ["config", "validate", "--config", str(path)])
    assert res.exit_code == 0 and "valid" in res.output, res.output


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_sweep_run_validates(path):
    base, _, runs = expand_sweep(path)
    assert runs
    for run in runs:
        load_config(base, run.overrides)
    res = CliRunner().invoke(cli, ["config", "validate", "--config", str(path)])
    assert res.exit_code == 0 and f"valid sweep ({len(runs)} runs" in res.output, res.output


def test_spider_script_overrides_validate():
    text = (REPO / "scripts" / "spider_cpu.sh").read_text().replace("\\\n", " ")
    variables = dict(line.split("=", 1) for line in text.splitlines() if "=" in line.split(" ")[0]
                     and line[:1].isupper())
    commands = [line for line in text.splitlines() if line.strip().startswith(("$E", "vantage"))
                and ("--set" in line or "$NO_EG" in line)]
    assert len(commands) >= 7
    for line in commands:
        for name, value in variables.items():
            line = line.replace(f"${name}", value.strip('"'))
        words = shlex.split(line.split("  #")[0].replace("$s", "1"))
        sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
        assert sets, line
        cfg = load_config(REPO / "configs" / "spider.yaml", sets)
        assert cfg.inference.beam_size >= 1, line


def test_a_bad_head_or_target_names_its_field():
    from vantage_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--set model\.heads=\[vocab,pointr\]: model\.heads: .*vocab, pointer, copy"):
        load_config(REPO / "configs" / "spider.yaml", ["model.heads=[vocab,pointr]"])
    with pytest.raises(ConfigError, match=r"data\.target: Input should be 'tokens' or 'actions'"):
        load_config(REPO / "configs" / "spider.yaml", ["data.target=action"])
