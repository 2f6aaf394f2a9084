"""Parameter counts (total, active per token, trainable) and training memory, without
allocating the model: MLX creates arrays lazily, so building the model records only shapes."""

from __future__ import annotations

from dataclasses import dataclass

from mlx.utils import tree_flatten

from vantage_core.config import ModelConfig
from vantage_core.model.moe import MoEBlock

BYTES = {"fp32": 4, "bf16": 2}


@dataclass
class ParamCount:
    total: int  # every parameter, schema encoder included
    active: int  # used by one token: routed experts count k/E
    trainable: int  # not frozen (a frozen MiniLM is excluded)
    routed: int  # in routed experts
    embedding: int

    def weights_bytes(self, dtype: str = "fp32") -> int:
        return self.total * BYTES[dtype]

    def training_bytes(self, dtype: str = "fp32") -> int:
        """Weights plus AdamW's two moments for the trainable parameters, all in ``dtype``
        (gradients and activations not included)."""
        return (self.total + 2 * self.trainable) * BYTES[dtype]


class _VocabOnly:
    """Stands in for a tokenizer when only the vocabulary size is known."""

    pad_id = 0

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError("a stand-in tokenizer for counting parameters cannot encode")


def _size(tree) -> int:
    return sum(v.size for _, v in tree_flatten(tree))


def count_model(model) -> ParamCount:
    """Count an already built model (its arrays need not be evaluated)."""
    total = _size(model.parameters())
    trainable = _size(model.trainable_parameters())
    routed = active_routed = 0
    for layer in model.layers:
        if isinstance(layer.ffn, MoEBlock):
            bank, k = layer.ffn.experts, layer.ffn.router.k
            n = bank.routed_size()
            routed += n
            active_routed += n * k // bank.num_experts
    return ParamCount(total=total, active=total - routed + active_routed, trainable=trainable,
                      routed=routed, embedding=model.embed.weight.size)


def count_parameters(model_cfg: ModelConfig, vocab_size: int | None = None, tokenizer=None,
                     registry=None) -> ParamCount:
    """Count the parameters the config describes; nothing is allocated."""
    from vantage_core.model.build import build_model

    if tokenizer is None and (vocab_size or model_cfg.vocab_size):
        tokenizer = _VocabOnly(vocab_size or model_cfg.vocab_size)
    return count_model(build_model(model_cfg, tokenizer, registry))


def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G" if unit else "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"
