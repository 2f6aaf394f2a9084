"""Built-in constraints."""

from vantage_core.api import hookimpl


@hookimpl
def register_constraints(register):
    from vantage_plugins.constraints.sql_schema import SQLSchemaConstraint

    from vantage_plugins.constraints.sql_actions import SQLActionsConstraint

    register("sql_schema", SQLSchemaConstraint)
    register("sql_actions", SQLActionsConstraint)
