"""Built-in routers."""

from vantage_core import hookimpl


@hookimpl
def register_routers(register):
    pass
