"""Options shared by the subcommands that take a config."""

from __future__ import annotations

import functools

import click


def config_options(func):
    """``--config FILE`` and repeatable ``--set key=value``."""

    @click.option("--config", "-c", "config", type=click.Path(dir_okay=False), default=None,
                  help="YAML config file (default: the built-in defaults).")
    @click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
                  help="Override one field, e.g. --set model.router.k=1 (repeatable).")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def load_from_options(options: dict):
    from vantage_core.config import load_config

    return load_config(options.get("config"), list(options.get("overrides") or ()))
