"""Built-in datasets.

Each adapter module imports only the standard library and Vantage's core at its top; the
``datasets`` library is imported inside the methods that use it.
"""

from vantage_core.api import hookimpl


@hookimpl
def register_datasets(register):
    from vantage_plugins.datasets.spider import BirdDataset, SpiderDataset
    from vantage_plugins.datasets.gretel import GretelDataset
    from vantage_plugins.datasets.outside import OutsideDataset
    from vantage_plugins.datasets.pairs import PairsDataset
    from vantage_plugins.datasets.synthetic import SyntheticDataset
    from vantage_plugins.datasets.templated import TemplatedDataset
    from vantage_plugins.datasets.wikisql import WikiSQLDataset

    register("spider", SpiderDataset)
    register("bird", BirdDataset)
    register("wikisql", WikiSQLDataset)
    register("gretel", GretelDataset)
    register("synthetic", SyntheticDataset)
    register("outside", OutsideDataset)
    register("pairs", PairsDataset)
    register("templated", TemplatedDataset)
