"""``transformer``: a small trainable bidirectional encoder over the decoder's token ids, and
``none``: no schema states (the schema lives only in the decoder's prompt)."""

from __future__ import annotations

import math

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import ConfigError, Linear, TextSchemaEncoder, pad_batch


def padding_bias(mask: mx.array, dtype=mx.float32) -> mx.array:
    """(B, S) bool mask -> (B, 1, 1, S) additive attention bias (0 keep, -inf-ish drop)."""
    return mx.where(mask[:, None, None, :], 0.0, -1e9).astype(dtype)


class EncoderLayer(nn.Module):
    """Pre-norm bidirectional self-attention and a GELU MLP."""

    def __init__(self, dim: int, n_heads: int, hidden: int):
        super().__init__()
        self.n_heads = n_heads
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = Linear(dim, 3 * dim, bias=False)
        self.out = Linear(dim, dim, bias=False)
        self.mlp_norm = nn.LayerNorm(dim)
        self.up = Linear(dim, hidden)
        self.down = Linear(hidden, dim)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        B, S, D = x.shape
        q, k, v = mx.split(self.qkv(self.attn_norm(x)), 3, axis=-1)
        q, k, v = (t.reshape(B, S, self.n_heads, -1).transpose(0, 2, 1, 3) for t in (q, k, v))  # (B, H, S, hd)
        a = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]), mask=bias)
        x = x + self.out(a.transpose(0, 2, 1, 3).reshape(B, S, D))
        return x + self.down(nn.gelu_approx(self.up(self.mlp_norm(x))))


class TransformerSchemaEncoder(TextSchemaEncoder, nn.Module):
    """A small trainable bidirectional transformer over the serialized question and schema,
    tokenized with the decoder's tokenizer, projected to the decoder's width."""

    provides_states = True

    def __init__(self, d_model: int, tokenizer, dim: int = 256, n_layers: int = 2, n_heads: int = 4,
                 hidden: int | None = None, max_len: int = 512, vocab_size: int | None = None):
        super().__init__()
        vocab_size = vocab_size or getattr(tokenizer, "vocab_size", None)
        if not vocab_size:
            raise ConfigError("model.schema_encoder (transformer): needs the decoder's tokenizer or "
                              "an explicit vocab_size")
        if dim % n_heads:
            raise ConfigError(f"model.schema_encoder.dim: {dim} is not divisible by n_heads ({n_heads})")
        self._tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id = getattr(tokenizer, "pad_id", 0) or 0
        self.embed = nn.Embedding(vocab_size, dim)
        self.position = nn.Embedding(max_len, dim)
        self.layers = [EncoderLayer(dim, n_heads, hidden or 4 * dim) for _ in range(n_layers)]
        self.norm = nn.LayerNorm(dim)
        self.proj = Linear(dim, d_model, bias=False)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if self._tokenizer is None:
            raise ConfigError("the transformer schema encoder was built without a tokenizer")
        return pad_batch([self._tokenizer.encode(t) for t in texts], self.pad_id, self.max_len)

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        S = ids.shape[1]
        x = self.embed(ids) + self.position(mx.arange(S))  # (B, S, dim)
        bias = padding_bias(mask, x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return self.proj(self.norm(x))  # (B, S, d_model)


class NoSchemaEncoder(TextSchemaEncoder, nn.Module):
    """No schema states: the decoder sees the schema only in its prompt."""

    provides_states = False

    def __init__(self, d_model: int, tokenizer=None):
        super().__init__()

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros((len(texts), 1), np.int32), np.zeros((len(texts), 1), np.bool_)

    def __call__(self, ids: mx.array, mask: mx.array) -> None:
        return None
