"""Config loading: typed sections, overrides, sweeps, and errors that name file, line and field."""

from __future__ import annotations

import textwrap

import pytest

from vantage_core import hookimpl
from vantage_core.config import expand_sweep, load_config
from vantage_core.errors import ConfigError
from vantage_core.plugins import Registry


def _factory(**accepted):
    def make(*core, **params):
        return params

    import inspect

    make.__signature__ = inspect.Signature(
        [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in accepted.items()])
    return make


class StandIns:
    """Stand-ins for every name the default config selects."""

    @hookimpl
    def register_routers(self, register):
        register("topk", _factory(k=2, aux_loss_weight=0.01))
        register("switch", _factory(aux_loss_weight=0.01))

    @hookimpl
    def register_experts(self, register):
        register("swiglu", _factory())

    @hookimpl
    def register_schema_encoders(self, register):
        register("transformer", _factory(n_layers=2))

    @hookimpl
    def register_datasets(self, register):
        register("synthetic", _factory(seed=0))

    @hookimpl
    def register_tokenizers(self, register):
        register("sentencepiece", _factory(vocab_size=1000))

    @hookimpl
    def register_loggers(self, register):
        register("jsonl", _factory())

    @hookimpl
    def register_metrics(self, register):
        register("execution", _factory())
        register("exact_match", _factory())


@pytest.fixture
def reg(fresh_pm):
    fresh_pm.register(StandIns())
    return Registry(fresh_pm)


def write(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_typed_sections_and_plugin_params(tmp_path, reg):
    path = write(tmp_path, """
        model:
          d_model: 64
          router: {name: topk, k: 1}
        train:
          steps: 7
    """)
    cfg = load_config(path, registry=reg)
    assert cfg.model.d_model == 64 and cfg.train.steps == 7
    assert cfg.model.router.name == "topk" and cfg.model.router.params == {"k": 1}
    assert cfg.model.expert.name == "swiglu"  # default filled in


def test_override_keeps_the_file_plugin_name(tmp_path, reg):
    path = write(tmp_path, "model:\n  router: {name: switch}\n")
    cfg = load_config(path, ["model.router.aux_loss_weight=0", "train.lr=3e-4"], registry=reg)
    assert cfg.model.router.name == "switch"
    assert cfg.model.router.params == {"aux_loss_weight": 0}
    assert cfg.train.lr == pytest.approx(3e-4)


def test_override_into_a_list(tmp_path, reg):
    cfg = load_config(None, ["data.train.0.weight=0.5"], registry=reg)
    assert cfg.data.train[0].weight == 0.5
    with pytest.raises(ConfigError, match=r"--set data.train.3.weight=1: .*no list item 3"):
        load_config(None, ["data.train.3.weight=1"], registry=reg)


def test_unknown_field_names_file_line_and_valid_fields(tmp_path, reg):
    path = write(tmp_path, """
        model:
          d_model: 64
          n_layer: 2
    """)
    with pytest.raises(ConfigError) as err:
        load_config(path, registry=reg)
    assert f"{path}:3: model.n_layer: unknown field 'n_layer'; valid fields:" in str(err.value)
    assert "n_layers" in str(err.value)


def test_wrong_type_names_the_line(tmp_path, reg):
    path = write(tmp_path, "run:\n  seed: 1\ntrain:\n  steps: many\n")
    with pytest.raises(ConfigError, match=rf"{path}:4: train.steps: .*integer"):
        load_config(path, registry=reg)


def test_unknown_plugin_lists_registered(tmp_path, reg):
    path = write(tmp_path, "model:\n  d_model: 32\n  router:\n    name: topq\n")
    with pytest.raises(ConfigError, match=rf"{path}:4: model.router.name: unknown router 'topq'; registered: switch, topk"):
        load_config(path, registry=reg)


def test_unexpected_plugin_parameter_lists_accepted(tmp_path, reg):
    path = write(tmp_path, "model:\n  router:\n    name: topk\n    kk: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}:4: model.router.kk: router 'topk' takes no parameter 'kk'; it accepts: aux_loss_weight, k"):
        load_config(path, registry=reg)


def test_a_parameter_of_the_linked_encoder_is_checked_against_its_settings(tmp_path):
    """The linked schema encoder takes its parameters as LinkedSettings: a misspelt one is still
    an error at its file line that lists every field it accepts."""
    path = write(tmp_path, "model:\n  schema_encoder:\n    name: linked\n    n_layer: 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:4: model.schema_encoder.n_layer: schema_encoder 'linked' takes "
                                          r"no parameter 'n_layer'; it accepts: cache_dir, description_weight, dropout, hidden, "
                                          r"link_features, max_question, n_heads, n_layers, path, relations$"):
        load_config(path)


def test_bad_override_names_the_override(reg):
    with pytest.raises(ConfigError, match=r"--set model.router.name=nope: model.router.name: unknown router 'nope'"):
        load_config(None, ["model.router.name=nope"], registry=reg)
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        load_config(None, ["model.router.k"], registry=reg)


def test_yaml_syntax_error_points_at_line(tmp_path, reg):
    path = write(tmp_path, "model:\n  d_model: 64\n  router: {name: topk\ntrain: {}\n")
    with pytest.raises(ConfigError, match=rf"{path}:4:\d+: YAML syntax error"):
        load_config(path, registry=reg)


def test_duplicate_key_is_an_error(tmp_path, reg):
    path = write(tmp_path, "train:\n  steps: 1\n  steps: 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: train.steps: duplicate key \(first at line 2\)"):
        load_config(path, registry=reg)


def test_missing_file(tmp_path, reg):
    with pytest.raises(ConfigError, match="cannot read the config"):
        load_config(tmp_path / "nope.yaml", registry=reg)


def test_sweep_expands_grid_times_runs(tmp_path):
    write(tmp_path, "train: {steps: 5}\n", "base.yaml")
    sweep = write(tmp_path, """
        base: base.yaml
        name: routers
        set: {train.steps: 3}
        runs:
          - {name: topk, model.router.name: topk}
          - {name: switch, model.router.name: switch}
        grid:
          model.router.aux_loss_weight: [0.0, 0.01]
    """, "sweep.yaml")
    base, name, runs = expand_sweep(sweep)
    assert base == (tmp_path / "base.yaml").resolve() and name == "routers"
    assert [r.name for r in runs] == ["topk,aux_loss_weight=0.0", "topk,aux_loss_weight=0.01",
                                      "switch,aux_loss_weight=0.0", "switch,aux_loss_weight=0.01"]
    assert runs[3].overrides == ["train.steps=3", "model.router.name=switch", "model.router.aux_loss_weight=0.01"]


def test_sweep_errors(tmp_path):
    sweep = write(tmp_path, "base: b.yaml\ngrid:\n  model.router.k: 2\n", "s.yaml")
    with pytest.raises(ConfigError, match=rf"{sweep}:3: grid.model.router.k: grid maps dotted keys to non-empty lists"):
        expand_sweep(sweep)
    sweep = write(tmp_path, "bas: b.yaml\n", "s2.yaml")
    with pytest.raises(ConfigError, match=r"unknown field 'bas'; valid fields: base, grid, name, runs, set"):
        expand_sweep(sweep)


@pytest.mark.parametrize("value", ["1.0", "-0.1", "1.5"])
def test_link_dropout_outside_its_range_names_the_line(tmp_path, reg, value):
    """data.link_dropout is a probability below 1: anything else is one error at its file and line."""
    path = write(tmp_path, f"data:\n  target: actions\n  link_dropout: {value}\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: data.link_dropout: Input should be (greater|less) than"):
        load_config(path, registry=reg)


def test_link_dropout_needs_the_actions_target(tmp_path, reg):
    """Hiding schema-linking matches means nothing to a token-writing model: an error, not a no-op."""
    path = write(tmp_path, "data:\n  link_dropout: 0.3\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: data.link_dropout: 0.3; .*needs data.target: actions"):
        load_config(path, registry=reg)
    assert load_config(None, ["data.link_dropout=0.0"], registry=reg).data.link_dropout == 0.0
