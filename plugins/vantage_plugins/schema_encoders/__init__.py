"""Built-in schema_encoders."""

from vantage_core import hookimpl


@hookimpl
def register_schema_encoders(register):
    pass
