"""Built-in datasets."""

from vantage_core import hookimpl


@hookimpl
def register_datasets(register):
    pass
