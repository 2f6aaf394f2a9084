"""Built-in schema encoders."""

from vantage_core import hookimpl


@hookimpl
def register_schema_encoders(register):
    from vantage_plugins.schema_encoders.minilm import MiniLMSchemaEncoder
    from vantage_plugins.schema_encoders.transformer import NoSchemaEncoder, TransformerSchemaEncoder

    register("transformer", TransformerSchemaEncoder)
    register("minilm", MiniLMSchemaEncoder)
    register("none", NoSchemaEncoder)
