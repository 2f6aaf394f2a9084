"""Built-in experts."""

from vantage_core import hookimpl


@hookimpl
def register_experts(register):
    pass
