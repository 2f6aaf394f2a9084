"""A schema-pointing text-to-SQL model: the decoder names tables and columns by pointing at the
encoded schema items of the given database, and copies values as spans of the question.

Why: a decoder that spells names from a subword vocabulary memorises the training schemas and
does not transfer to unseen databases (issue 8: 0.9% execution accuracy). Pointing makes every
schema name a choice among the items of *this* database, scored by their encoded states, the
way IRNet and RAT-SQL do it. The question is encoded by the frozen MiniLM (or trainable
word-piece embeddings), the items by MiniLM embeddings of their natural names plus the linking
features of a ``schema_linker`` plugin (:class:`LinkEmbedding`), a small trainable encoder mixes
the two, and the decoder layers are the project's :class:`DecoderLayer`, so the feed-forward
blocks are the configured router and experts. One softmax covers the three kinds of action of
:mod:`vantage_core.data.sql_actions`; :mod:`vantage_core.inference.pointer_search` decodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mlx.core as mx
import mlx.nn as nn

from vantage_core.data.sql_actions import ITEM, QUESTION, VOCAB

ITEM_TYPES = ("table", "text", "number", "time", "boolean", "others")


class LinkEmbedding(nn.Module):
    """Learned embeddings of the linking features, added to item and question-token states."""

    def __init__(self, d_model: int):
        super().__init__()
        self.item_name = nn.Embedding(3, d_model)
        self.item_value = nn.Embedding(2, d_model)
        self.word_table = nn.Embedding(3, d_model)
        self.word_column = nn.Embedding(3, d_model)
        self.word_value = nn.Embedding(2, d_model)
        for emb in (self.item_name, self.item_value, self.word_table, self.word_column, self.word_value):
            emb.weight = emb.weight * 0.02  # start near zero: the features nudge, then learn

    def item_states(self, name: mx.array, value: mx.array) -> mx.array:
        """(B, N) int features -> (B, N, d)."""
        return self.item_name(name) + self.item_value(value)

    def word_states(self, table: mx.array, column: mx.array, value: mx.array) -> mx.array:
        """(B, Q) int features -> (B, Q, d)."""
        return self.word_table(table) + self.word_column(column) + self.word_value(value)


@dataclass
class PointerArgs:
    vocab_size: int
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_hidden: int = 512
    dropout: float = 0.1
    input_dim: int = 384  # MiniLM's width
    question_input: str = "minilm"  # minilm | embed (trainable word-piece embeddings) | none
    link_features: bool = True
    wordpiece_vocab: int = 30522
    max_question: int = 128
    max_steps: int = 128
    router: dict = field(default_factory=lambda: {"name": "topk", "params": {"k": 2}})
    expert: dict = field(default_factory=lambda: {"name": "swiglu", "params": {}})
    num_experts: int = 4
    moe_every: int = 1  # 0: dense feed-forward blocks


class PointerSQL(nn.Module):
    """Encoder over [question pieces; schema items], pointer decoder over actions."""

    def __init__(self, args: PointerArgs, registry=None):
        super().__init__()
        from vantage_core.model.moe import MoEBlock
        from vantage_core.model.transformer import DecoderArgs, DecoderLayer

        if registry is None:
            from vantage_core.plugins import registry as default_registry
            registry = default_registry()
        self.args = a = args
        d = a.d_model
        if a.question_input == "minilm":
            self.q_proj = nn.Linear(a.input_dim, d)
            self.name_proj = nn.Linear(a.input_dim, d)
            self.table_proj = nn.Linear(a.input_dim, d)
        else:  # trainable word-piece embeddings (the "small trainable encoder" / "none" ablations)
            self.piece_embed = nn.Embedding(a.wordpiece_vocab, d)
            self.table_proj = nn.Linear(d, d)
        self.q_pos = nn.Embedding(a.max_question, d)
        self.segment = nn.Embedding(2, d)
        self.item_type = nn.Embedding(len(ITEM_TYPES), d)
        self.item_key = nn.Embedding(4, d)  # primary * 1 + foreign * 2
        if a.link_features:
            self.links = LinkEmbedding(d)
        self.encoder = nn.TransformerEncoder(a.encoder_layers, d, a.n_heads, a.ffn_hidden, dropout=a.dropout) \
            if a.encoder_layers else None
        self.embed = nn.Embedding(a.vocab_size, d)
        self.item_in = nn.Linear(d, d, bias=False)
        self.q_in = nn.Linear(d, d, bias=False)
        dargs = DecoderArgs(vocab_size=a.vocab_size, d_model=d, n_layers=a.decoder_layers, n_heads=a.n_heads,
                            n_kv_heads=a.n_heads, head_dim=d // a.n_heads, max_seq_len=a.max_steps,
                            rope_theta=10000.0, norm_eps=1e-5, moe_every=a.moe_every, dense_hidden=a.ffn_hidden,
                            cross_attention_every=1, tie_embeddings=False)

        def make_ffn(i):
            if not dargs.is_moe(i):
                from vantage_core.model.transformer import SwiGLU
                return SwiGLU(d, a.ffn_hidden)
            router = registry.build("router", a.router["name"], d, a.num_experts, **a.router.get("params", {}))
            experts = registry.build("expert", a.expert["name"], d, a.ffn_hidden // max(1, router.k),
                                     a.num_experts, **a.expert.get("params", {}))
            return MoEBlock(router, experts)

        self.layers = [DecoderLayer(dargs, i, make_ffn(i)) for i in range(a.decoder_layers)]
        self.norm = nn.RMSNorm(d)
        self.vocab_head = nn.Linear(d, a.vocab_size, bias=False)
        self.item_query = nn.Linear(d, d, bias=False)
        self.q_query = nn.Linear(d, d, bias=False)
        self.drop = nn.Dropout(a.dropout)

    def update_routers(self, loads: mx.array) -> None:
        """Give routers that balance outside the gradient (``aux_free``) the observed loads."""
        from vantage_core.model.moe import MoEBlock

        blocks = [layer.ffn for layer in self.layers if isinstance(layer.ffn, MoEBlock)]
        for block, load in zip(blocks, loads):
            if hasattr(block.router, "update_bias"):
                block.router.update_bias(load)

    # ------------------------------------------------------------------ encoder

    def encode(self, b: dict) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """Batch -> (question states (B, Q, d), item states (B, N, d), q mask, item mask)."""
        a = self.args
        qmask, imask = b["q_mask"], b["item_mask"]
        Q = qmask.shape[1]
        if a.question_input == "minilm":
            q = self.q_proj(b["q_states"])  # (B, Q, d)
            names = self.name_proj(b["item_vec"]) + self.table_proj(b["item_table_vec"])  # (B, N, d)
        else:
            q = self.piece_embed(b["q_ids"])
            ids, m = b["item_pieces"], b["item_pieces_mask"].astype(mx.float32)  # (B, N, P)
            pooled = (self.piece_embed(ids) * m[..., None]).sum(2) / mx.maximum(m.sum(2, keepdims=True), 1.0)
            tids, tm = b["table_pieces"], b["table_pieces_mask"].astype(mx.float32)
            tpooled = (self.piece_embed(tids) * tm[..., None]).sum(2) / mx.maximum(tm.sum(2, keepdims=True), 1.0)
            names = pooled + self.table_proj(tpooled)
        q = q + self.q_pos(mx.arange(Q)) + self.segment(mx.zeros((Q,), mx.int32))
        items = names + self.item_type(b["item_type"]) + self.item_key(b["item_key"]) + self.segment(mx.ones((1,), mx.int32))
        if a.link_features:
            q = q + self.links.word_states(b["q_link_table"], b["q_link_column"], b["q_link_value"])
            items = items + self.links.item_states(b["item_link_name"], b["item_link_value"])
        x = mx.concatenate([q, items], axis=1)  # (B, Q + N, d)
        mask = mx.concatenate([qmask, imask], axis=1)
        if self.encoder is not None:
            bias = mx.where(mask[:, None, None, :], 0.0, -1e9).astype(x.dtype)
            x = self.encoder(self.drop(x), bias)
        return x[:, :Q], x[:, Q:], qmask, imask

    # ------------------------------------------------------------------ decoder

    def embed_actions(self, kinds: mx.array, values: mx.array, q_states, item_states) -> mx.array:
        """(B, T) action kinds and values -> input embeddings (B, T, d)."""
        vocab = self.embed(mx.where(kinds == VOCAB, values, 0).astype(mx.int32))
        item_idx = mx.where(kinds == ITEM, values, 0).astype(mx.int32)
        q_idx = mx.where(kinds == QUESTION, values, 0).astype(mx.int32)
        it = mx.take_along_axis(item_states, item_idx[..., None], axis=1)  # (B, T, d)
        qu = mx.take_along_axis(q_states, q_idx[..., None], axis=1)
        k = kinds[..., None]
        return mx.where(k == VOCAB, vocab, mx.where(k == ITEM, self.item_in(it), self.q_in(qu)))

    def decode(self, kinds, values, q_states, item_states, qmask, imask):
        """Teacher-forced inputs (B, T) -> scores over [vocab; items; question pieces]
        (B, T, V + N + Q), and the routers' aux."""
        from vantage_core.model.transformer import _collect_aux

        x = self.drop(self.embed_actions(kinds, values, q_states, item_states))
        memory = mx.concatenate([q_states, item_states], axis=1)
        mmask = mx.concatenate([qmask, imask], axis=1)
        bias = mx.where(mmask[:, None, None, :], 0.0, -1e9).astype(x.dtype)
        routings = []
        for layer in self.layers:
            x, routing = layer(x, layer.cross.keys_values(memory), bias, None)
            if routing is not None:
                routings.append(routing)
        h = self.norm(x)  # (B, T, d)
        scale = 1 / math.sqrt(h.shape[-1])
        s_vocab = self.vocab_head(h)
        s_item = (self.item_query(h) @ item_states.transpose(0, 2, 1)) * scale  # (B, T, N)
        s_q = (self.q_query(h) @ q_states.transpose(0, 2, 1)) * scale  # (B, T, Q)
        s_item = mx.where(imask[:, None, :], s_item, -1e9)
        s_q = mx.where(qmask[:, None, :], s_q, -1e9)
        return mx.concatenate([s_vocab, s_item, s_q], axis=-1), _collect_aux(routings)


def pointer_loss(model: PointerSQL, b: dict) -> tuple[mx.array, mx.array, mx.array]:
    """Cross-entropy over the unified action space, plus router aux losses; returns (loss, ce,
    loads (n_moe_layers, E)) -- feed the loads to :meth:`PointerSQL.update_routers`."""
    q, it, qm, im = model.encode(b)
    scores, aux = model.decode(b["in_kind"], b["in_value"], q, it, qm, im)
    mask = b["target_mask"].astype(mx.float32)
    ce = nn.losses.cross_entropy(scores, b["target"], reduction="none")
    ce = (ce * mask).sum() / mx.maximum(mask.sum(), 1.0)
    loads = mx.stack(aux["loads"]) if aux["loads"] else mx.zeros((0,))
    return ce + aux["aux_loss"], ce, loads
