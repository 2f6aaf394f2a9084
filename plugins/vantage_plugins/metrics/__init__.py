"""Built-in metrics. Each module imports only the standard library and Vantage's core at
import time; sqlglot, sqlparse and matplotlib load when a metric first needs them."""

from vantage_core.api import hookimpl

from vantage_plugins.metrics.bird import BirdExecution, BirdVES
from vantage_plugins.metrics.spider_metrics import ExactMatch, ExecutionAccuracy
from vantage_plugins.metrics.valid_sql import ValidSQL
from vantage_plugins.metrics.wikisql import WikiSQLExecution, WikiSQLLogicalForm


@hookimpl
def register_metrics(register):
    register("exact_match", ExactMatch)
    register("execution", ExecutionAccuracy)
    register("bird_ex", BirdExecution)
    register("bird_ves", BirdVES)
    register("wikisql_lf", WikiSQLLogicalForm)
    register("wikisql_ex", WikiSQLExecution)
    register("valid_sql", ValidSQL)
