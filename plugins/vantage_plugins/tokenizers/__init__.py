"""Built-in tokenizers."""

from vantage_core import hookimpl


@hookimpl
def register_tokenizers(register):
    pass
