"""Built-in constraints."""

from vantage_core import hookimpl


@hookimpl
def register_constraints(register):
    from vantage_plugins.constraints.sql_schema import SQLSchemaConstraint

    register("sql_schema", SQLSchemaConstraint)
