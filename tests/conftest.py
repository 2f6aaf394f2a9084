"""Shared fixtures: a fresh plugin manager per test, and the location of ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import vantage_core  # noqa: F401  (loads the optimized BLAS before anything imports mlx)

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("VANTAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """``../shared/data``; the test skips with a message where it is absent."""
    path = shared_data_dir()
    if not (path / "spider" / "train_spider.json").exists():
        pytest.skip(f"real Spider data not found at {path} (set VANTAGE_SHARED_DATA to its folder)")
    return path


@pytest.fixture
def fresh_pm():
    """A plugin manager with Vantage's hook specs and no plugin loaded."""
    from vantage_core.plugins import PluginManager

    return PluginManager()
