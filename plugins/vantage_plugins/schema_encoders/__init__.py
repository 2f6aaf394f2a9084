"""Built-in schema encoders."""

from vantage_core.api import hookimpl


@hookimpl
def register_schema_encoders(register):
    from vantage_plugins.schema_encoders.minilm import MiniLMSchemaEncoder
    from vantage_plugins.schema_encoders.transformer import NoSchemaEncoder, TransformerSchemaEncoder

    from vantage_plugins.schema_encoders.linked import LinkedSchemaEncoder

    register("transformer", TransformerSchemaEncoder)
    register("linked", LinkedSchemaEncoder)
    register("minilm", MiniLMSchemaEncoder)
    register("none", NoSchemaEncoder)
