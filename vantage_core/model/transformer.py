"""The model: a pre-norm decoder with rotary attention, sparse MoE feed-forward blocks and
cross-attention to the schema encoder's memory every few layers, with output heads chosen by
config.

Output ids live in one space: ``0 .. V-1`` the vocabulary (``vocab`` head), then ``V .. V+N-1``
the schema items of this database (``pointer`` head), then ``V+N .. V+N+Q-1`` the question
pieces (``copy`` head). An id is also an input: an item or a question piece enters the decoder
as its encoded state, so a model that points at ``singer.name`` reads that column's state next.
Why pointing: a decoder that spells names from subwords memorises the training schemas and does
not transfer to unseen databases (0.9% execution accuracy on held-out Spider databases).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from vantage_core import kernels
from vantage_core.model.moe import MoEBlock
from vantage_core.config import HEADS  # noqa: F401  (vocab, pointer, copy)
from vantage_core.model.packing import Packing, pack, unpack
from vantage_core.model.schema import Memory


@dataclass
class DecoderArgs:
    """The decoder's shape, resolved from :class:`vantage_core.config.ModelConfig`."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_seq_len: int
    rope_theta: float
    norm_eps: float
    moe_every: int  # 0: no MoE layer (a dense model)
    dense_hidden: int
    cross_attention_every: int  # 0: no cross-attention
    tie_embeddings: bool
    heads: tuple[str, ...] = ("vocab",)
    dropout: float = 0.0  # on the decoder's input embeddings

    def is_moe(self, layer: int) -> bool:
        return self.moe_every > 0 and (layer + 1) % self.moe_every == 0

    def has_cross(self, layer: int) -> bool:
        return self.cross_attention_every > 0 and (layer + 1) % self.cross_attention_every == 0


class KVCache:
    """Self-attention keys/values of one layer, grown in steps; plus the schema cross-attention
    keys/values, computed once per request."""

    step = 16  # small: beam search reorders the whole buffer every step

    def __init__(self):
        self.keys = self.values = None  # (B, H_kv, capacity, hd)
        self.offset = 0
        self.cross_kv: tuple[mx.array, mx.array] | None = None  # (B, H_kv, S, hd) each
        self.cross_bias: mx.array | None = None  # (B, 1, 1, S) additive

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        B, H, T, D = k.shape
        end = self.offset + T
        if self.keys is None or end > self.keys.shape[2]:
            grow = ((T + self.step - 1) // self.step) * self.step
            new_k, new_v = mx.zeros((B, H, grow, D), k.dtype), mx.zeros((B, H, grow, D), v.dtype)
            if self.keys is None:
                self.keys, self.values = new_k, new_v
            else:
                self.keys = mx.concatenate([self.keys[..., :self.offset, :], new_k], axis=2)
                self.values = mx.concatenate([self.values[..., :self.offset, :], new_v], axis=2)
        self.keys[..., self.offset:end, :] = k
        self.values[..., self.offset:end, :] = v
        self.offset = end
        return self.keys[..., :end, :], self.values[..., :end, :]


class Linear(nn.Linear):
    """``mlx.nn.Linear`` (same parameters, same checkpoints) whose product runs in the precision
    :func:`vantage_core.kernels.matmul_precision` sets: float32, or in mixed-precision training
    bf16 inputs with float32 sums."""

    def __call__(self, x: mx.array) -> mx.array:
        return kernels.linear(x, self["weight"], self.get("bias"))


class Attention(nn.Module):
    """Causal self-attention with rotary positions; grouped-query when n_kv_heads < n_heads."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.scale = 1 / math.sqrt(args.head_dim)
        self.q_proj = Linear(args.d_model, args.n_heads * args.head_dim, bias=False)
        self.k_proj = Linear(args.d_model, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = Linear(args.d_model, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = Linear(args.n_heads * args.head_dim, args.d_model, bias=False)
        self.rope = nn.RoPE(args.head_dim, base=args.rope_theta)

    def __call__(self, x: mx.array, cache: KVCache | None = None, packing: Packing | None = None) -> mx.array:
        # x: (B, T, d), or with a packing the (n, d) real positions of a (B, T) batch
        q, k, v = (unpack(packing, proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))  # (B, T, H * hd)
        B, T, _ = q.shape
        q = q.reshape(B, T, self.n_heads, -1).transpose(0, 2, 1, 3)  # (B, H, T, hd)
        k = k.reshape(B, T, self.n_kv_heads, -1).transpose(0, 2, 1, 3)  # (B, H_kv, T, hd)
        v = v.reshape(B, T, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q, k = self.rope(q, offset=offset), self.rope(k, offset=offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        # "causal" aligns the last query with the last key, so it holds with a cache too.
        out = kernels.attention(q, k, v, self.scale, causal=T > 1)
        return self.o_proj(pack(packing, out.transpose(0, 2, 1, 3).reshape(B, T, -1)))


def grouped(x: mx.array, n: int) -> tuple[mx.array, tuple[int, ...]]:
    """(R, T, ...) -> (n, R // n * T, ...) and R's shape: the rows of each of ``n`` requests side
    by side, for layers without positions that read one memory row per request."""
    if x.shape[0] == n:
        return x, x.shape
    if x.shape[0] % n:
        raise ValueError(f"{x.shape[0]} rows do not split into {n} equal groups")
    return x.reshape(n, -1, *x.shape[2:]), x.shape


class CrossAttention(nn.Module):
    """Attention from the decoder to the schema states (no positions: the encoder has them)."""

    def __init__(self, args: DecoderArgs):
        super().__init__()
        self.n_heads, self.n_kv_heads = args.n_heads, args.n_kv_heads
        self.scale = 1 / math.sqrt(args.head_dim)
        self.q_proj = Linear(args.d_model, args.n_heads * args.head_dim, bias=False)
        self.k_proj = Linear(args.d_model, args.n_kv_heads * args.head_dim, bias=False)
        self.v_proj = Linear(args.d_model, args.n_kv_heads * args.head_dim, bias=False)
        self.o_proj = Linear(args.n_heads * args.head_dim, args.d_model, bias=False)

    def keys_values(self, states: mx.array, packing: Packing | None = None) -> tuple[mx.array, mx.array]:
        """(B, S, d) schema states -> keys and values (B, H_kv, S, hd), reusable across steps
        (with the states' ``packing``, projected at their real positions only)."""
        B, S, _ = states.shape
        x = pack(packing, states)
        k, v = (unpack(packing, proj(x)).reshape(B, S, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
                for proj in (self.k_proj, self.v_proj))
        return k, v

    def __call__(self, x: mx.array, kv: tuple[mx.array, mx.array], bias: mx.array | None,
                 packing: Packing | None = None) -> mx.array:
        # With fewer memory rows than x rows (beams of one request share its memory), x's rows
        # come request-major in equal groups: each group attends as extra query positions.
        q, rows = grouped(unpack(packing, self.q_proj(x)), kv[0].shape[0])  # (B, T, H * hd)
        B, T, _ = q.shape
        out = kernels.attention(q.reshape(B, T, self.n_heads, -1).transpose(0, 2, 1, 3), *kv, self.scale, bias=bias)
        out = out.transpose(0, 2, 1, 3).reshape(*rows[:-1], -1)
        return self.o_proj(pack(packing, out))


class SwiGLU(nn.Module):
    """The dense feed-forward block of non-MoE layers."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.gate_up = Linear(d_model, 2 * hidden, bias=False)
        self.down = Linear(hidden, d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.down(kernels.swiglu(self.gate_up(x)))


class RMSNorm(nn.Module):
    """``mlx.nn.RMSNorm`` (same parameter, same checkpoints) on the fused kernel."""

    def __init__(self, dims: int, eps: float):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        return kernels.rms_norm(x, self.weight, self.eps)


class Dropout(nn.Module):
    """``mlx.nn.Dropout`` on the fused kernel (no parameters: same checkpoints)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability {p} outside [0, 1)")
        self.p = p

    def __call__(self, x: mx.array) -> mx.array:
        return kernels.dropout(x, self.p) if self.training else x


class DecoderLayer(nn.Module):
    def __init__(self, args: DecoderArgs, layer: int, ffn: nn.Module):
        super().__init__()
        self.attn_norm = RMSNorm(args.d_model, eps=args.norm_eps)
        self.attn = Attention(args)
        if args.has_cross(layer):
            self.cross_norm = RMSNorm(args.d_model, eps=args.norm_eps)
            self.cross = CrossAttention(args)
        self.ffn_norm = RMSNorm(args.d_model, eps=args.norm_eps)
        self.ffn = ffn

    @property
    def has_cross(self) -> bool:
        return "cross" in self

    def __call__(self, x: mx.array, cross_kv, cross_bias, cache: KVCache | None, packing: Packing | None = None):
        x = x + self.attn(self.attn_norm(x), cache, packing)
        if cross_kv is not None and self.has_cross:
            x = x + self.cross(self.cross_norm(x), cross_kv, cross_bias, packing)
        if isinstance(self.ffn, MoEBlock):
            y, routing = self.ffn(self.ffn_norm(x))
            return x + y, routing
        return x + self.ffn(self.ffn_norm(x)), None


class Transformer(nn.Module):
    """The text-to-SQL model with its schema encoder.

    ``model(tokens, memory, cache) -> (logits (B, T, V [+ N] [+ Q]), aux)``.
    """

    def __init__(self, args: DecoderArgs, make_moe, schema_encoder: nn.Module | None = None):
        super().__init__()
        self.args = args
        d = args.d_model
        self.embed = nn.Embedding(args.vocab_size, d)
        self.layers = [DecoderLayer(args, i, make_moe() if args.is_moe(i) else SwiGLU(d, args.dense_hidden))
                       for i in range(args.n_layers)]
        self.norm = RMSNorm(d, eps=args.norm_eps)
        if not args.tie_embeddings:
            self.lm_head = Linear(d, args.vocab_size, bias=False)
        if "pointer" in args.heads:
            self.item_in = Linear(d, d, bias=False)  # an item's state as the next input
            self.item_query = Linear(d, d, bias=False)
        if "copy" in args.heads:
            self.question_in = Linear(d, d, bias=False)
            self.question_query = Linear(d, d, bias=False)
        self.drop = Dropout(args.dropout)
        self.schema_encoder = schema_encoder if schema_encoder is not None and schema_encoder.provides_states else None

    # ---------------------------------------------------------------- schema

    def schema_inputs(self, batch: dict) -> dict[str, mx.array]:
        """A host-side batch -> the arrays :meth:`encode_schema` reads (empty without an encoder)."""
        return {} if self.schema_encoder is None else self.schema_encoder.inputs(batch)

    def encode_schema(self, inputs: dict[str, mx.array]) -> Memory:
        """The schema encoder's :class:`Memory` for a batch (empty without an encoder)."""
        return Memory() if self.schema_encoder is None or not inputs else self.schema_encoder.memory(inputs)

    # ---------------------------------------------------------------- decoding

    def make_cache(self) -> list[KVCache]:
        """A fresh per-layer cache for one batch of requests."""
        return [KVCache() for _ in self.layers]

    def reorder_cache(self, cache: list[KVCache], rows: mx.array, requests: mx.array | None = None) -> list[KVCache]:
        """Beam search's cache update: self-attention keys/values of rows ``rows`` (each new
        row's parent); the cross-attention keys/values, one row per request, of ``requests``
        (None: the same requests as before). Steps then pass one memory row per request."""
        for c in cache:
            if c.keys is not None:
                c.keys, c.values = c.keys[rows], c.values[rows]
            if requests is not None and c.cross_kv is not None:
                c.cross_kv = (c.cross_kv[0][requests], c.cross_kv[1][requests])
                c.cross_bias = c.cross_bias[requests] if c.cross_bias is not None else None
        return cache

    def step_memory(self, memory: Memory) -> Memory:
        """What decoding steps after the first read of ``memory``: the cross-attention keys and
        values are in the cache by then, so only the pointer and copy heads' states."""
        return Memory(items=memory.items, item_mask=memory.item_mask, question=memory.question,
                      question_mask=memory.question_mask)

    def embed_ids(self, ids: mx.array, memory: Memory) -> mx.array:
        """(B, T) ids of the unified output space -> input embeddings (B, T, d)."""
        V = self.args.vocab_size
        if len(self.args.heads) == 1:
            return self.embed(ids)
        states = memory.items if memory.items is not None else memory.question
        ids, rows = grouped(ids, states.shape[0]) if states is not None else (ids, ids.shape)
        x = self.embed(mx.where(ids < V, ids, 0))
        offset = V
        for head, states, proj in (("pointer", memory.items, "item_in"), ("copy", memory.question, "question_in")):
            if head not in self.args.heads or states is None:
                continue
            n = states.shape[1]
            rel = ids - offset
            picked = mx.take_along_axis(states, mx.clip(rel, 0, n - 1)[..., None], axis=1)  # (B, T, d)
            x = mx.where(((rel >= 0) & (rel < n))[..., None], getattr(self, proj)(picked), x)
            offset += n
        return x.reshape(*rows, x.shape[-1])

    def hidden(self, tokens: mx.array, memory: Memory | None = None, cache=None, packing: Packing | None = None):
        """(B, T) ids -> (final hidden states (B, T, d), aux); see :meth:`__call__`. With a
        :class:`~vantage_core.model.packing.Packing` of the batch's padding, every layer but
        attention runs on the real positions only and the states come back packed, (n, d)."""
        memory = memory or Memory()
        x = pack(packing, self.drop(self.embed_ids(tokens, memory)))  # (B, T, d) or (n, d)
        states, mask = memory.states, memory.mask
        if states is not None and mask is None:
            mask = mx.ones(states.shape[:2], dtype=mx.bool_)
        cross_bias = None if mask is None else mx.where(mask[:, None, None, :], 0.0, -1e9).astype(x.dtype)  # (B, 1, 1, S)
        routings = []
        for i, layer in enumerate(self.layers):
            layer_cache = cache[i] if cache is not None else None
            kv, bias = None, cross_bias
            if layer.has_cross:
                if layer_cache is not None and layer_cache.cross_kv is not None:
                    kv, bias = layer_cache.cross_kv, layer_cache.cross_bias
                elif states is not None:
                    kv = layer.cross.keys_values(states, memory.packing)
                    if layer_cache is not None:  # computed once per request, reused by every step
                        layer_cache.cross_kv, layer_cache.cross_bias = kv, cross_bias
            x, routing = layer(x, kv, bias, layer_cache, packing)
            if routing is not None:
                routings.append(routing)
        return self.norm(x), _collect_aux(routings)

    def tied_head(self, h: mx.array) -> mx.array:
        """(..., d) -> (..., V) scores against the embedding table (``model.tie_embeddings``), in
        the precision of the other projections; a quantized table keeps its own product."""
        if isinstance(self.embed, nn.Embedding):
            return kernels.linear(h, self.embed.weight)
        return self.embed.as_linear(h)

    def logits(self, h: mx.array, memory: Memory | None = None, packing: Packing | None = None) -> mx.array:
        """Final hidden states (..., d), or packed ones (n, d) with their ``packing`` -> scores
        over the unified output space (B, T, ...): the vocabulary, then (pointer) this
        database's items, then (copy) the question pieces. Padded items and pieces score -1e9."""
        vocab = unpack(packing, self.tied_head(h) if self.args.tie_embeddings else self.lm_head(h))
        if len(self.args.heads) == 1:
            return vocab
        scale = 1 / math.sqrt(h.shape[-1])
        states = memory.items if memory.items is not None else memory.question
        vocab, rows = grouped(vocab, states.shape[0])
        out = [vocab]
        for head, states, smask, proj in (("pointer", memory.items, memory.item_mask, "item_query"),
                                          ("copy", memory.question, memory.question_mask, "question_query")):
            if head in self.args.heads and states is not None:
                query = grouped(unpack(packing, getattr(self, proj)(h)), states.shape[0])[0]  # (B, T, d)
                scores = (query @ states.swapaxes(-1, -2)) * scale  # (B, T, N) or (B, T, Q)
                out.append(mx.where(smask[:, None, :], scores, -1e9) if smask is not None else scores)
        out = mx.concatenate(out, axis=-1)
        return out.reshape(*rows[:-1], out.shape[-1])

    def __call__(self, tokens: mx.array, memory: Memory | None = None, cache: list[KVCache] | None = None):
        """(B, T) int32 ids -> (logits (B, T, V [+ N] [+ Q]), aux).

        ``aux``: ``aux_loss`` (every router's weighted auxiliary losses summed), ``balance`` and
        ``z`` (their parts), ``loads`` (one (E,) array per MoE layer: share of token-slots per
        expert). With a ``cache``, the memory's cross-attention keys/values are stored on the
        first call and reused after it; the memory is still passed each step (pointer inputs
        and scores read it).
        """
        h, aux = self.hidden(tokens, memory, cache)
        return self.logits(h, memory), aux

    def update_routers(self, loads: list[mx.array] | mx.array) -> None:
        """Feed each MoE layer's observed load to routers that balance outside the gradient
        (``aux_free``); call after each optimizer step with ``aux["loads"]``."""
        moe_layers = [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoEBlock)]
        for block, load in zip(moe_layers, loads):
            if hasattr(block.router, "update_bias"):
                block.router.update_bias(load)


def _collect_aux(routings) -> dict[str, Any]:
    zero = mx.array(0.0)
    balance = sum((r.aux_losses.get("balance", zero) for r in routings), zero)
    z = sum((r.aux_losses.get("z", zero) for r in routings), zero)
    other = sum((v for r in routings for name, v in r.aux_losses.items() if name not in ("balance", "z")), zero)
    return {"aux_loss": balance + z + other, "balance": balance, "z": z,
            "loads": [r.load for r in routings]}
