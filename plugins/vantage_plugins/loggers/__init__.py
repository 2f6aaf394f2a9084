"""Built-in loggers."""

from vantage_core import hookimpl


@hookimpl
def register_loggers(register):
    pass
