"""Plugin mechanics: registration, discovery by entry point, the autoload switch, errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pluggy
import pytest

from vantage_core import hookimpl
from vantage_core.errors import PluginError
from vantage_core.plugins import Registry, get_plugin_manager


class ToyRouter:
    """A router for tests."""

    def __init__(self, d_model, num_experts, *, k: int = 2, jitter: float = 0.0):
        self.k, self.jitter = k, jitter


class RoutersA:
    @hookimpl
    def register_routers(self, register):
        register("toy", ToyRouter)


class RoutersB:
    @hookimpl
    def register_routers(self, register):
        register("toy", dict)


def test_registration_and_build(fresh_pm):
    fresh_pm.register(RoutersA(), name="a")
    reg = Registry(fresh_pm)
    assert reg.names("router") == ["toy"]
    entry = reg.get("router", "toy")
    assert entry.description == "A router for tests."
    assert sorted(entry.parameters()) == ["jitter", "k"]  # the core's own arguments are not config keys
    router = reg.build("router", "toy", 32, 4, k=1)
    assert router.k == 1


def test_unknown_name_lists_registered(fresh_pm):
    fresh_pm.register(RoutersA(), name="a")
    with pytest.raises(PluginError, match=r"unknown router 'topq'; registered: toy"):
        Registry(fresh_pm).get("router", "topq")


def test_unexpected_parameter_lists_accepted(fresh_pm):
    fresh_pm.register(RoutersA(), name="a")
    with pytest.raises(PluginError, match=r"router 'toy' takes no parameter 'kk'; it accepts: jitter, k"):
        Registry(fresh_pm).build("router", "toy", 32, 4, kk=1)


@dataclass(frozen=True)
class ToyExpertSettings:
    width: int = 8
    gated: bool = True


class ToyExpert:
    """An expert taking its parameters as one dataclass."""

    params_type = ToyExpertSettings

    def __init__(self, d_model, hidden, num_experts, **params):
        self.settings = ToyExpertSettings(**params)


class Experts:
    @hookimpl
    def register_experts(self, register):
        register("toy", ToyExpert)


def test_parameters_of_a_factory_with_a_params_type_are_its_fields(fresh_pm):
    """A factory that takes ``**params`` and names their dataclass in ``params_type`` accepts
    exactly that dataclass's fields: an unknown key lists them."""
    fresh_pm.register(Experts(), name="e")
    reg = Registry(fresh_pm)
    assert list(reg.get("expert", "toy").parameters()) == ["width", "gated"]
    assert reg.build("expert", "toy", 32, 64, 4, width=3).settings == ToyExpertSettings(width=3)
    with pytest.raises(PluginError, match=r"expert 'toy' takes no parameter 'widht'; it accepts: gated, width$"):
        reg.build("expert", "toy", 32, 64, 4, widht=3)


def test_duplicate_name_names_both_plugins(fresh_pm):
    fresh_pm.register(RoutersA(), name="plugin_a")
    fresh_pm.register(RoutersB(), name="plugin_b")
    with pytest.raises(PluginError) as err:
        Registry(fresh_pm)
    message = str(err.value)
    assert "two plugins register the router 'toy'" in message
    assert "plugin_a" in message and "plugin_b" in message
    assert "ToyRouter" in message and "dict" in message


def test_misspelled_hook_is_caught(fresh_pm):
    class Typo:
        @hookimpl
        def register_ruters(self, register):
            pass

    fresh_pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="register_ruters"):
        fresh_pm.check_pending()


def test_unknown_kind():
    with pytest.raises(PluginError, match="unknown plugin kind 'routr'"):
        Registry(get_plugin_manager()).names("routr")


def test_builtins_are_discovered_by_entry_point():
    pm = get_plugin_manager()
    reg = Registry(pm)
    builtin = {e.plugin for e in reg.entries()}
    assert builtin, "no built-in plugin registered anything"
    for entry in reg.entries():
        if entry.plugin in {"routers", "experts", "datasets", "metrics"}:
            assert entry.distribution == "vantage"
    assert pm.distributions["routers"][0] == "vantage"


def _run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=full_env, timeout=120)


@pytest.fixture(scope="session")
def example_plugin_installed():
    """Install the example third-party plugin package (examples/vantage-example-plugin)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("vantage-example-plugin")
        return
    except PackageNotFoundError:
        pass
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps",
                             "-q", str(Path(__file__).resolve().parents[1] / "examples" / "vantage-example-plugin")],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.fail(f"pip could not install the example plugin:\n{result.stderr[-2000:]}")


def test_third_party_plugin_discovered(example_plugin_installed):
    result = _run("""
        from vantage_core.plugins import registry
        e = registry().get("router", "random")
        d = registry().get("dataset", "jsonl_pairs")
        print(e.distribution, e.version, d.distribution)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["vantage-example-plugin", "0.1.0", "vantage-example-plugin"]


def test_autoload_switch_keeps_only_builtins(example_plugin_installed):
    code = """
        from vantage_core.plugins import registry
        r = registry()
        print("random" in r.names("router"), "topk" in r.names("router") or r.names("router") == [])
    """
    off = _run(code, {"VANTAGE_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.split()[0] == "False"
    on = _run(code, {"VANTAGE_DISABLE_PLUGIN_AUTOLOAD": ""})
    assert on.stdout.split()[0] == "True"
    # An explicitly named plugin loads even with autoload off.
    named = _run(code, {"VANTAGE_DISABLE_PLUGIN_AUTOLOAD": "1", "VANTAGE_PLUGINS": "vantage_example"})
    assert named.stdout.split()[0] == "True"


def test_example_plugin_components_work(example_plugin_installed, tmp_path):
    """The example package's router routes inside a real MoE block; its adapter loads and fails cleanly."""
    import json
    import sqlite3

    import mlx.core as mx

    from vantage_core.errors import DataError
    from vantage_core.model.moe import MoEBlock
    from vantage_core.plugins import registry

    router = registry().build("router", "random", 16, 4, k=2)
    experts = registry().build("expert", "swiglu", 16, 32, 4)
    y, routing = MoEBlock(router, experts)(mx.random.normal((2, 5, 16)))
    assert y.shape == (2, 5, 16) and routing.indices.shape == (10, 2)
    assert abs(float(routing.load.sum()) - 1.0) < 1e-6

    db = tmp_path / "shop.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL)")
    rows = [{"question": "How many items?", "sql": "SELECT count(*) FROM items", "db": "shop.sqlite"},
            {"question": "Lost", "sql": "SELECT 1", "db": "gone.sqlite"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = registry().build("dataset", "jsonl_pairs", path=str(tmp_path)).load("train")
    assert [e.question for e in report.examples] == ["How many items?"]
    assert report.examples[0].schema.tables[0].primary_keys == ["id"]
    assert report.skipped["database missing"] == 1 and "gone.sqlite" in report.details[0]

    (tmp_path / "validation.jsonl").write_text('{"question": "q", "sql": "SELECT 1", "db": "shop.sqlite"}\n{oops\n')
    with pytest.raises(DataError, match=r"validation.jsonl:2: expected a JSON object"):
        registry().build("dataset", "jsonl_pairs", path=str(tmp_path)).load("validation")
