"""Built-in metrics."""

from vantage_core import hookimpl


@hookimpl
def register_metrics(register):
    pass
