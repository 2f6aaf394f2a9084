"""The MoE text-to-SQL decoder in MLX: build it from a config, train it with :func:`loss`."""

from vantage_core.model.build import build_model
from vantage_core.model.loss import loss
from vantage_core.model.moe import ExpertBank, MoEBlock, Router, Routing
from vantage_core.model.schema import SchemaEncoder
from vantage_core.model.transformer import KVCache, Transformer

__all__ = ["build_model", "loss", "Transformer", "KVCache", "MoEBlock", "Routing", "Router",
           "ExpertBank", "SchemaEncoder"]
