"""Built-in constraints."""

from vantage_core import hookimpl


@hookimpl
def register_constraints(register):
    pass
