"""Assemble the decoder from a :class:`~vantage_core.config.ModelConfig` and the plugins it names."""

from __future__ import annotations

import mlx.core as mx

from vantage_core.config import ModelConfig, plugin_params
from vantage_core.errors import ConfigError, PluginError
from vantage_core.model.moe import ExpertBank, MoEBlock, Router
from vantage_core.model.transformer import DecoderArgs, Transformer

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_args(cfg: ModelConfig, vocab_size: int | None, k: int) -> DecoderArgs:
    """Fill the config's defaults (vocabulary, heads, dense width) and check they fit together."""
    if cfg.vocab_size and vocab_size and cfg.vocab_size != vocab_size:
        raise ConfigError(f"model.vocab_size: {cfg.vocab_size} differs from the tokenizer's "
                          f"vocabulary ({vocab_size}); set it to {vocab_size} or to null")
    vocab = cfg.vocab_size or vocab_size
    if not vocab:
        raise ConfigError("model.vocab_size: unknown; set it, or build the model with a trained tokenizer")
    n_kv = cfg.n_kv_heads or cfg.n_heads
    if cfg.n_heads % n_kv:
        raise ConfigError(f"model.n_kv_heads: {n_kv} must divide n_heads ({cfg.n_heads})")
    if cfg.head_dim is None and cfg.d_model % cfg.n_heads:
        raise ConfigError(f"model.n_heads: {cfg.n_heads} must divide d_model ({cfg.d_model}), or set head_dim")
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {cfg.dtype!r}; valid: {', '.join(DTYPES)}")
    return DecoderArgs(
        vocab_size=vocab, d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
        n_kv_heads=n_kv, head_dim=cfg.head_dim or cfg.d_model // cfg.n_heads,
        max_seq_len=cfg.max_seq_len, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps,
        moe_every=cfg.moe_every, dense_hidden=cfg.dense_hidden or cfg.expert_hidden * k,
        cross_attention_every=cfg.cross_attention_every, tie_embeddings=cfg.tie_embeddings,
        heads=tuple(cfg.heads), dropout=cfg.dropout)


def build_model(model_cfg: ModelConfig, tokenizer=None, registry=None) -> Transformer:
    """The decoder with the router, expert bank and schema encoder its config names.

    ``tokenizer``: the decoder's tokenizer (gives ``vocab_size``; the ``transformer`` schema
    encoder reuses it). Weights are created lazily: nothing is allocated until they are
    evaluated, so building is also how :mod:`vantage_core.model.params` counts parameters.
    """
    if registry is None:
        from vantage_core.plugins import registry as default_registry
        registry = default_registry()
    cfg = model_cfg
    d, E = cfg.d_model, cfg.num_experts

    def make_router():
        router = registry.build("router", cfg.router.name, d, E, **plugin_params(cfg.router))
        if not isinstance(router, Router):
            raise PluginError(f"router {cfg.router.name!r} built a {type(router).__name__}, which lacks "
                              f"num_experts, k or __call__ (see vantage_core.model.moe.Router)")
        return router

    def make_moe():
        experts = registry.build("expert", cfg.expert.name, d, cfg.expert_hidden, E, **plugin_params(cfg.expert))
        if not isinstance(experts, ExpertBank):
            raise PluginError(f"expert {cfg.expert.name!r} built a {type(experts).__name__}, which lacks "
                              f"num_experts, __call__, shared or routed_size (see vantage_core.model.moe.ExpertBank)")
        return MoEBlock(make_router(), experts)

    k = make_router().k
    args = resolve_args(cfg, getattr(tokenizer, "vocab_size", None), k)
    encoder = None
    if cfg.cross_attention_every:
        encoder = registry.build("schema_encoder", cfg.schema_encoder.name, d, tokenizer,
                                 **plugin_params(cfg.schema_encoder))
        if not getattr(encoder, "provides_states", False):
            args.cross_attention_every = 0  # nothing to attend to: no cross-attention layers
            encoder = None
    if len(args.heads) > 1 and (encoder is None or not getattr(encoder, "provides_items", False)):
        raise ConfigError(f"model.heads: {', '.join(args.heads)} point at schema items and question pieces, "
                          f"which the schema encoder {cfg.schema_encoder.name!r} does not provide; use one "
                          f"that does (linked) with cross_attention_every > 0, or heads: [vocab]")
    model = Transformer(args, make_moe, encoder)
    if cfg.dtype != "float32":
        model.set_dtype(DTYPES[cfg.dtype])
    return model
