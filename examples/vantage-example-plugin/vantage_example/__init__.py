"""An example third-party Vantage plugin: the ``random`` router and the ``jsonl_pairs`` dataset.

Vantage finds this module through the ``vantage`` entry point in ``pyproject.toml`` and calls
the hooks below with a ``register`` callback. Imports of the implementations stay inside the
hooks, so that listing plugins stays fast.
"""

from vantage_core.api import hookimpl


@hookimpl
def register_routers(register):
    from vantage_example.routers import RandomRouter

    register("random", RandomRouter)


@hookimpl
def register_datasets(register):
    from vantage_example.datasets import JsonlPairs

    register("jsonl_pairs", JsonlPairs)
