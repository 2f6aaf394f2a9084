"""Options shared by the subcommands that take a config."""

from __future__ import annotations

import functools
import math

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


def allow_privileged_option(func):
    """``--allow-privileged``: model SQL may run as a database role that can write (unsafe)."""

    def allow(ctx, param, value):
        if value:
            from vantage_core.sql.database import allow_privileged

            allow_privileged()

    return click.option("--allow-privileged", is_flag=True, expose_value=False, callback=allow,
                        help="UNSAFE: run model SQL even as a PostgreSQL role that can write or administer (a "
                             "superuser, say). By default such a role is refused; make one that can only read "
                             "with `vantage data load-into URL --from FILE --reader ROLE`.")(func)


def options_into(options_class: type):
    """Hand a command its parameters (options and arguments) as one ``options_class``: a
    dataclass whose fields are their names. Click still parses, checks and documents each one;
    the command function reads them as ``options.name``. Put it right above the function."""

    def decorate(func):
        @functools.wraps(func)
        def command(**params):
            return func(options_class(**params))

        return command

    return decorate


def load_from_options(options: dict):
    from vantage_core.config import load_config

    return load_config(options.get("config"), list(options.get("overrides") or ()))


class FiniteFloat(click.FloatRange):
    """A float within a range that is also a real number: ``nan`` and ``inf`` are refused (a
    plain ``FloatRange`` lets ``nan`` through, since every comparison with it is false)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number; give a number in the range {self._describe_range()}", param, ctx)
        return number


def positive_seconds() -> FiniteFloat:
    """A number of seconds: finite and more than 0."""
    return FiniteFloat(min=0, min_open=True)
