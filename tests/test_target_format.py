"""The target format (``data.target``) as one object per format, and the one data pipeline with
one cache format for both: chosen once, round trips through the cache, old or broken caches
rebuilt rather than read."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import vantage_core  # noqa: F401

from vantage_core.config import load_config
from vantage_core.data.pipeline import PREPARE_VERSION, SplitData, cache_key, load_split
from vantage_core.data.targets import ActionTarget, TokenTarget, target_format
from vantage_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
TOKENS, POINTER = FIXTURES / "train_tiny.yaml", FIXTURES / "train_tiny_pointer.yaml"
# data.target (or a copy of it) compared with a format's name, or looked up among names
READS_THE_NAME = re.compile(r"""target\s*(==|!=)\s*["']|["'](tokens|actions)["']\s*(==|!=)|data\.target\s+(not\s+)?in\b""")


def test_only_the_format_module_and_the_config_read_the_target_name():
    """No module but vantage_core/data/targets.py (which picks the format) and config.py (which
    checks what goes with which target) compares data.target with a format's name; the others
    ask the format object. (Two configs' targets compared with each other is no such test.)"""
    files = [*(REPO / "vantage_core").rglob("*.py"), *(REPO / "benchmarks").rglob("*.py"),
             *(REPO / "plugins").rglob("*.py")]
    allowed = {REPO / "vantage_core" / "data" / "targets.py", REPO / "vantage_core" / "config.py"}
    found = [f"{f.relative_to(REPO)}:{n}: {line.strip()}" for f in sorted(files) if f not in allowed
             for n, line in enumerate(f.read_text().splitlines(), 1) if READS_THE_NAME.search(line)]
    assert not found, "ask the format object (vantage_core.data.targets) instead:\n" + "\n".join(found)
    for line in ('if cfg.data.target == "actions":', "if self.config.data.target in (x,):",
                 "target = cfg.data.target; if target != 'tokens':"):  # the pattern finds what it looks for
        assert READS_THE_NAME.search(line), line
    assert not READS_THE_NAME.search("if old.data.target != new.data.target:")


def test_the_format_is_chosen_from_the_config():
    """target_format gives the object of the configured format; a name no format has is one
    ConfigError that lists the valid ones."""
    assert isinstance(target_format(load_config(TOKENS, registry=False).data), TokenTarget)
    assert isinstance(target_format(load_config(POINTER, registry=False).data), ActionTarget)
    data = load_config(TOKENS, registry=False).data.model_construct(target="trees")
    with pytest.raises(ConfigError, match=r"^data\.target: 'trees'; valid: tokens, actions$"):
        target_format(data)


@pytest.fixture(scope="module")
def token_setup(tmp_path_factory):
    """The tiny token config with its own data cache, and its trained tokenizer."""
    from vantage_core.data.pipeline import train_tokenizer

    root = tmp_path_factory.mktemp("tokens")
    cfg = load_config(TOKENS, [f"data.cache_dir={root / 'cache'}"])
    return cfg, train_tokenizer(cfg.data, root / "tok")


@pytest.fixture(scope="module")
def action_setup(tmp_path_factory):
    """The tiny pointer config with its own data cache, and its schema encoder's question tokenizer."""
    from vantage_core.plugins import registry

    root = tmp_path_factory.mktemp("actions")
    cfg = load_config(POINTER, [f"data.cache_dir={root / 'cache'}"])
    return cfg, ActionTarget.question_tokenizer(cfg, registry())


def rows_of(split) -> list:
    """What a prepared split holds per example, whatever its format."""
    if split.target == "tokens":
        return [(t.tolist(), int(s), e) for t, s, e in zip(split.tokens, split.sql_start, split.encoder_texts)]
    return split.feats


@pytest.mark.parametrize("setup", ["token_setup", "action_setup"])
def test_a_prepared_split_round_trips_through_the_cache(setup, request):
    """Both formats write one Arrow file per split, named by slot, format and content key; the
    second prepare reads it and gives the same rows, examples and sort keys."""
    cfg, tokenizer = request.getfixturevalue(setup)
    target = target_format(cfg.data)
    cold = target.prepare("validation", tokenizer, progress=False)
    warm = target.prepare("validation", tokenizer, progress=False)
    assert not cold.from_cache and warm.from_cache and cold.cache_file == warm.cache_file
    assert Path(cold.cache_file).name == f"validation-{target.name}-{cold.key}.arrow"
    assert {"row", "id", "source", "sort_key"} <= set(pa.ipc.open_file(cold.cache_file).schema.names)
    assert len(cold) == len(warm) == len(load_split(cfg.data, "validation").examples) > 0
    assert rows_of(cold) == rows_of(warm)
    assert [e.id for e in cold.examples] == [e.id for e in warm.examples] == warm.ids
    assert np.array_equal(cold.lengths, warm.lengths) and warm.record()["target"] == target.name


@pytest.mark.parametrize("setup", ["token_setup", "action_setup"])
def test_a_cache_file_that_cannot_be_read_as_one_is_rebuilt(setup, request):
    """A cache file that is not an Arrow file, one cut short, or one with another layout (as the
    old token cache had: no sort_key column) is a miss: the split is encoded again and the file
    replaced, never a crash."""
    cfg, tokenizer = request.getfixturevalue(setup)
    target = target_format(cfg.data)
    good = target.prepare("validation", tokenizer, progress=False)
    path = Path(good.cache_file)
    old_layout = pa.table({"row": [0], "id": ["x"], "source": [0], "tokens": [[1, 2]]})
    with pa.OSFile(str(path.with_suffix(".old")), "wb") as sink, pa.ipc.new_file(sink, old_layout.schema) as w:
        w.write_table(old_layout)
    for damage in (b"not arrow at all", path.read_bytes()[:200], path.with_suffix(".old").read_bytes()):
        path.with_suffix(".bad").write_bytes(damage)
        os.replace(path.with_suffix(".bad"), path)  # a new file: the prepared splits above keep their mapping
        again = target.prepare("validation", tokenizer, progress=False)
        assert not again.from_cache and rows_of(again) == rows_of(good)
        assert target.prepare("validation", tokenizer, progress=False).from_cache  # the file was rewritten


def test_the_training_slot_drops_what_the_format_cannot_train_on(token_setup):
    """In the train slot the rows the format's encoder names are dropped and counted per source
    by reason; the same examples stay in another slot."""
    cfg, tokenizer = token_setup
    target = target_format(cfg.data)
    loaded = load_split(cfg.data, "train")
    full = target.prepare("validation", tokenizer, split=loaded, progress=False)
    limit = int(np.median(full.column("length")))  # about half the examples are longer
    cut = target.prepare("train", tokenizer, split=loaded, progress=False, max_seq_len=limit)
    dropped, n = cut.sources[0].dropped, len(loaded.examples)
    assert len(full) == n and 0 < len(cut) < n and sum(dropped.values()) == n - len(cut)
    assert dropped[f"sequence longer than max_seq_len={limit}"] > 0
    assert set(dropped) <= {"SQL longer than max_sql_tokens=64", f"sequence longer than max_seq_len={limit}"}
    assert all(len(t) <= limit + 1 for t in cut.tokens) and cut.sources[0].kept == len(cut)


def test_one_cache_key_for_every_format():
    """The content key changes with the encoder's fingerprint, an example's text and its
    schema, and with nothing else; it starts from the pipeline's version."""
    from vantage_core.data.example import Example
    from vantage_core.sql.schema import Column, Schema, Table

    schema = Schema("db", [Table("t", [Column("a")])])
    other = Schema("db", [Table("t", [Column("b")])])
    split = SplitData("train", [Example("q", "SELECT a FROM t", "db", schema, [])], [0], [])
    key = cache_key(split, ["tokens", 1])
    assert key == cache_key(split, ["tokens", 1]) and len(key) == 20
    assert key != cache_key(split, ["actions", 1]) != cache_key(split, ["tokens", 2])
    assert key != cache_key(SplitData("train", [Example("q", "SELECT a FROM t", "db", other, [])], [0], []),
                            ["tokens", 1])
    assert key != cache_key(SplitData("train", [Example("q?", "SELECT a FROM t", "db", schema, [])], [0], []),
                            ["tokens", 1])
    assert PREPARE_VERSION >= 2
