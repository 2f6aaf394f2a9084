"""The `vantage` command frame: plugins, config validate/show, doctor, and clean errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from vantage_core.cli import main


def run_cli(args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code or 0, out.out, out.err


def test_plugins_lists_builtins_with_distribution(capsys):
    code, out, _ = run_cli(["plugins", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert rows and all({"kind", "name", "distribution", "version"} <= set(r) for r in rows)
    assert {r["distribution"] for r in rows if r["plugin"] == "routers"} <= {"vantage"}


def test_config_show_applies_overrides(capsys):
    code, out, err = run_cli(["config", "show", "--set", "train.steps=3", "--set", "model.d_model=48"], capsys)
    assert code == 0, err
    shown = yaml.safe_load(out)
    assert shown["train"]["steps"] == 3 and shown["model"]["d_model"] == 48


def test_config_validate_reports_file_line_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  router:\n    name: topq\n")
    code, _, err = run_cli(["config", "validate", "--config", str(bad)], capsys)
    assert code == 2
    assert f"{bad}:3: model.router.name: unknown router 'topq'; registered:" in err
    assert "Traceback" not in err


def test_doctor_reports_blas_and_rates(capsys):
    code, out, _ = run_cli(["doctor", "--size", "128"], capsys)
    assert code == 0
    assert "blas active" in out and "GFLOP/s" in out and "mlx" in out


def test_a_missing_dependency_is_one_line_naming_the_package(capsys, monkeypatch):
    """Without mlx in the environment, doctor (or any command) says which package is missing and
    how to install it, not a traceback."""
    monkeypatch.setitem(sys.modules, "mlx.core", None)  # `import mlx.core` now fails as if absent
    code, out, err = run_cli(["doctor", "--size", "16"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: the Python package 'mlx' is not installed for ") and "install.sh" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_entry_point_script_runs():
    result = subprocess.run([sys.executable, "-m", "vantage_core.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "plugins" in result.stdout


def test_unknown_subcommand_is_a_usage_error(capsys):
    code, _, err = run_cli(["trian"], capsys)
    assert code == 2 and "No such command 'trian'" in err
