"""``linked``: a question-aware schema encoder for pointer models (``data.target: actions``).

The question's word pieces and every schema item (a table, or a column with its table) enter as
frozen all-MiniLM-L6-v2 states (a piece's contextual state; an item's mean-pooled name, averaged
with its description's where schema notes describe it: ``description_weight``),
plus learned embeddings of the item's type and key role and of the ``schema_linker`` plugin's
features (which question words name which items, by name or by a stored cell value). A small
trainable transformer mixes question and items jointly (with ``relations: true``, RAT-SQL's
relation-aware attention: per pair of positions a relation id from
``vantage_core.data.actions.relation_matrix``, read as a learned key vector and per-head bias);
the decoder cross-attends to the result, points at items and copies question pieces. The frozen
states are computed once per text and kept on disk keyed by content
(``<cache>/minilm/states.sqlite``), so training runs MiniLM once over its data, evaluation reads
the states back, and a new database costs one pass over its names.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from vantage_core.api import ConfigError, Dropout, Linear, Memory, Packing, kernels, pack, packing_arrays, unpack

ITEM_TYPES = 6  # vantage_core.data.actions.ITEM_TYPES
INPUTS = ("q_mask", "item_mask", "item_type", "item_key", "item_link_name", "item_link_value",
          "q_link_table", "q_link_column", "q_link_value")


class FrozenMiniLM:
    """MiniLM states per text, computed once: per question its piece states (L, 384), per name
    its mean-pooled state (384,). Not a submodule: checkpoints do not carry the frozen weights."""

    def __init__(self, path: str | None = None, max_len: int = 128, cache_dir: str | None = None):
        from vantage_plugins.schema_encoders.minilm import default_model_dir

        self.folder = Path(path) if path else default_model_dir()
        self.max_len = max_len
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._bert = None
        self._tokenizer = None
        self.pieces: dict[str, np.ndarray] = {}  # question -> (L, 384) float16
        self.pooled: dict[str, np.ndarray] = {}  # name -> (384,) float16

    @property
    def tokenizer(self):
        """MiniLM's WordPiece tokenizer (``tokenizers.Tokenizer``), unpadded."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            tok.enable_truncation(self.max_len)
            tok.no_padding()
            self._tokenizer = tok
        return self._tokenizer

    @property
    def bert(self):
        if self._bert is None:
            from vantage_plugins.schema_encoders.minilm import MiniLM, _rename

            cfg = json.loads((self.folder / "config.json").read_text())
            bert = MiniLM(cfg)
            weights = {_rename(k): v for k, v in mx.load(str(self.folder / "model.safetensors")).items()}
            bert.load_weights([(k, v) for k, v in weights.items() if k is not None], strict=True)
            bert.freeze()
            bert.eval()
            self._bert = bert
        return self._bert

    def _run(self, pieces: list[list[int]]) -> list[np.ndarray]:
        """MiniLM over one batch of piece sequences -> per sequence its states (L_i, 384)."""
        L = max(len(p) for p in pieces)
        ids = np.zeros((len(pieces), L), np.int32)
        mask = np.zeros((len(pieces), L), bool)
        for i, p in enumerate(pieces):
            ids[i, :len(p)], mask[i, :len(p)] = p, True
        states = np.array(self.bert(mx.array(ids), mx.array(mask)))
        return [states[i, :len(p)] for i, p in enumerate(pieces)]

    def compute(self, questions: list[str], names: list[str], progress: bool = False, batch: int = 128) -> None:
        """Fill the in-memory caches for these texts: from the disk store where it has them,
        else by running MiniLM over all that are missing, names and questions in the same
        batches (sorted by length: little padding; one pass for a new database), then into the
        store."""
        from tqdm.auto import tqdm

        missing = []  # (text, pooled)
        for texts, store, pool in ((names, self.pooled, True), (questions, self.pieces, False)):
            wanted = sorted(set(texts) - set(store))
            found = self._read(wanted, pool) if wanted else {}
            store.update(found)
            missing += [(t, pool) for t in wanted if t not in found]
        computed: dict[bool, dict[str, np.ndarray]] = {True: {}, False: {}}
        # Names (a few pieces) and questions (a few dozen) in separate batches, each sorted by
        # length: little padding, and a new database costs about two passes. The cost is mostly
        # MiniLM's exact GELU over every padded position (single-threaded on this CPU).
        encoded = self.tokenizer.encode_batch([t for t, _ in missing]) if missing else []
        rows = sorted(((pool, len(e.ids), t, e.ids) for (t, pool), e in zip(missing, encoded)))
        chunks = [[r for r in rows if r[0] == pool][s:s + batch] for pool in (True, False)
                  for s in range(0, sum(r[0] == pool for r in rows), batch)]
        for chunk in tqdm(chunks, desc="MiniLM states", disable=not progress or not chunks, file=sys.stderr,
                          dynamic_ncols=True):
            for (pool, _, t, _), st in zip(chunk, self._run([ids for *_, ids in chunk])):
                computed[pool][t] = (st.mean(0) if pool else st).astype(np.float16)
        for pool, store in ((True, self.pooled), (False, self.pieces)):
            store.update(computed[pool])
            self._write(computed[pool], pool)

    def precompute(self, questions: list[str], names: list[str], progress: bool = True) -> Path | None:
        """:meth:`compute` with a progress bar (training: every text of its splits, once)."""
        self.compute(questions, names, progress)
        return self._store_path

    # -- the disk store: one SQLite file, a row per (model, kind, text); states as float16 bytes
    @property
    def _store_path(self) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / "minilm" / "states.sqlite"

    def _connect(self):
        import sqlite3

        path = self._store_path
        path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(path, timeout=60)
        con.execute("PRAGMA synchronous = OFF")  # a cache: a write lost in a crash is computed again
        con.execute("CREATE TABLE IF NOT EXISTS states (key TEXT PRIMARY KEY, shape TEXT, data BLOB)")
        return con

    def _key(self, text: str, pooled: bool) -> str:
        head = f"{self.folder.name}\x00{self.max_len}\x00{'pooled' if pooled else 'pieces'}\x00"
        return hashlib.sha1((head + text).encode()).hexdigest()

    def _read(self, texts: list[str], pooled: bool) -> dict[str, np.ndarray]:
        if self._store_path is None or not self._store_path.is_file():
            return {}
        keys = {self._key(t, pooled): t for t in texts}
        out = {}
        con = self._connect()
        try:
            items = list(keys)
            for s in range(0, len(items), 500):
                chunk = items[s:s + 500]
                rows = con.execute(f"SELECT key, shape, data FROM states WHERE key IN ({','.join('?' * len(chunk))})",
                                   chunk).fetchall()
                for key, shape, data in rows:
                    out[keys[key]] = np.frombuffer(data, np.float16).reshape(json.loads(shape))
        finally:
            con.close()
        return out

    def _write(self, states: dict[str, np.ndarray], pooled: bool) -> None:
        if self._store_path is None or not states:
            return
        con = self._connect()
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)",
                                [(self._key(t, pooled), json.dumps(list(v.shape)), v.tobytes()) for t, v in states.items()])
        finally:
            con.close()


class LinkEmbedding(nn.Module):
    """Learned embeddings of the linking features, added to item and question-piece states."""

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

    def piece_states(self, table: mx.array, column: mx.array, value: mx.array) -> mx.array:
        """(B, Q) int features -> (B, Q, d)."""
        return self.word_table(table) + self.word_column(column) + self.word_value(value)


class RelationAttention(nn.Module):
    """Self-attention with RAT-SQL's relation terms: each ordered pair (i, j) has a relation id
    r_ij (``vantage_core.data.actions.RELATIONS``) with a learned key vector (shared by the heads)
    and a learned per-head bias, so the logit is (q_i . (k_j + e_r) / sqrt(dh)) + b_r^h. Both are
    read as one gather from the (B, H, S, R) logits of every query against every relation."""

    def __init__(self, dims: int, num_heads: int, n_relations: int):
        super().__init__()
        self.num_heads = num_heads
        self.query_proj = Linear(dims, dims, bias=False)
        self.key_proj = Linear(dims, dims, bias=False)
        self.value_proj = Linear(dims, dims, bias=False)
        self.out_proj = Linear(dims, dims, bias=False)
        self.rel_key = mx.zeros((n_relations, dims // num_heads))  # (R, dh); zeros: starts as plain attention
        self.rel_bias = mx.zeros((num_heads, n_relations))  # (H, R)

    def __call__(self, x: mx.array, rel: mx.array, mask: mx.array, packing: Packing | None = None) -> mx.array:
        # x: (B, S, d), or with a packing the (n, d) real positions
        B, S = rel.shape[:2]
        H = self.num_heads
        q, k, v = (unpack(packing, proj(x)).reshape(B, S, H, -1).transpose(0, 2, 1, 3)
                   for proj in (self.query_proj, self.key_proj, self.value_proj))  # (B, H, S, dh)
        scale = q.shape[-1] ** -0.5
        per_rel = (q * scale) @ self.rel_key.T + self.rel_bias[None, :, None, :]  # (B, H, S, R)
        idx = mx.broadcast_to(rel[:, None].astype(mx.int32), (B, H, S, S))
        bias = mx.take_along_axis(per_rel, idx, axis=-1) + mask  # (B, H, S, S)
        out = kernels.attention(q, k, v, scale, bias=bias)  # (B, H, S, dh)
        return self.out_proj(pack(packing, out.transpose(0, 2, 1, 3).reshape(B, S, -1)))


class RelationEncoderLayer(nn.Module):
    """``mlx.nn.TransformerEncoderLayer`` (pre-norm, ReLU MLP) with :class:`RelationAttention`."""

    def __init__(self, dims: int, num_heads: int, mlp_dims: int, n_relations: int, dropout: float = 0.0):
        super().__init__()
        self.attention = RelationAttention(dims, num_heads, n_relations)
        self.ln1, self.ln2 = nn.LayerNorm(dims), nn.LayerNorm(dims)
        self.linear1, self.linear2 = Linear(dims, mlp_dims), Linear(mlp_dims, dims)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)

    def __call__(self, x: mx.array, rel: mx.array, mask: mx.array, packing: Packing | None = None) -> mx.array:
        x = x + self.dropout1(self.attention(self.ln1(x), rel, mask, packing))  # (B, S, d) or (n, d)
        return x + self.linear2(self.dropout2(nn.relu(self.linear1(self.ln2(x)))))


class RelationEncoder(nn.Module):
    """A stack of :class:`RelationEncoderLayer` and a final LayerNorm (as ``nn.TransformerEncoder``)."""

    def __init__(self, n_layers: int, dims: int, num_heads: int, mlp_dims: int, n_relations: int,
                 dropout: float = 0.0):
        super().__init__()
        self.layers = [RelationEncoderLayer(dims, num_heads, mlp_dims, n_relations, dropout) for _ in range(n_layers)]
        self.ln = nn.LayerNorm(dims)

    def __call__(self, x: mx.array, rel: mx.array, mask: mx.array, packing: Packing | None = None) -> mx.array:
        """``x`` (B, S, d) -> (B, S, d); with a packing of the padding, every layer but
        attention runs on the real positions only."""
        x = pack(packing, x)
        for layer in self.layers:
            x = layer(x, rel, mask, packing)
        return unpack(packing, self.ln(x))


@dataclass(frozen=True)
class LinkedSettings:
    """The linked encoder's parameters (``model.schema_encoder`` of a config)."""

    n_layers: int = 2  # mixer layers (0: no mixer)
    n_heads: int = 4
    hidden: int = 512  # the mixer's feed-forward width
    dropout: float = 0.1
    link_features: bool = True  # embed the schema linker's matches
    max_question: int = 128  # question pieces read
    path: str | None = None  # a MiniLM folder (default: the installed one)
    cache_dir: str | None = None  # where the frozen states are cached (default: $VANTAGE_CACHE or ~/.cache/vantage)
    relations: bool = False  # a relation-aware mixer (RAT-SQL)
    description_weight: float = 0.5  # a described item's state: (1 - w) * its name's + w * its description's


class LinkedSchemaEncoder(nn.Module):
    """Frozen MiniLM states of the question and the item names, linking features, and a
    trainable mixer over [question pieces; items]; with ``relations``, a relation-aware mixer
    (RAT-SQL): its attention also reads how each pair of positions relates (question distance,
    name or value links, column-in-table, primary and foreign keys). ``params``: the fields of
    :class:`LinkedSettings`."""

    provides_states = True
    provides_items = True  # pointer and copy heads can use it
    params_type = LinkedSettings  # what the registry checks a config's parameters against

    def __init__(self, d_model: int, tokenizer=None, **params):
        super().__init__()
        cfg = LinkedSettings(**params)
        if d_model % cfg.n_heads:
            raise ConfigError(f"model.schema_encoder.n_heads: {cfg.n_heads} must divide d_model ({d_model})")
        if not 0 <= cfg.dropout < 1:
            raise ConfigError(f"model.schema_encoder.dropout: {cfg.dropout}; valid: 0 <= dropout < 1")
        if not 0 <= cfg.description_weight <= 1:
            raise ConfigError(f"model.schema_encoder.description_weight: {cfg.description_weight}; valid: 0 to 1")
        self.description_weight = cfg.description_weight
        cache_dir = cfg.cache_dir
        if cache_dir is None:
            cache_dir = str(Path(os.environ.get("VANTAGE_CACHE") or Path.home() / ".cache" / "vantage"))
        object.__setattr__(self, "frozen", FrozenMiniLM(cfg.path, cfg.max_question, cache_dir))
        self.link_features = cfg.link_features
        self.max_question = cfg.max_question
        width = 384  # MiniLM's
        self.q_proj = Linear(width, d_model)
        self.name_proj = Linear(width, d_model)
        self.table_proj = Linear(width, d_model)
        self.q_pos = nn.Embedding(cfg.max_question, d_model)
        self.segment = nn.Embedding(2, d_model)
        self.item_type = nn.Embedding(ITEM_TYPES, d_model)
        self.item_key = nn.Embedding(4, d_model)  # primary * 1 + foreign * 2
        if cfg.link_features:
            self.links = LinkEmbedding(d_model)
        self.relations = bool(cfg.relations and cfg.n_layers)
        if self.relations:
            from vantage_core.api import RELATIONS

            self.mixer = RelationEncoder(cfg.n_layers, d_model, cfg.n_heads, cfg.hidden, len(RELATIONS), cfg.dropout)
        elif cfg.n_layers:
            self.mixer = nn.TransformerEncoder(cfg.n_layers, d_model, cfg.n_heads, cfg.hidden, dropout=cfg.dropout)
        else:
            self.mixer = None
        self.drop = Dropout(cfg.dropout)

    @property
    def question_tokenizer(self):
        """The tokenizer whose pieces the question states (and copied spans) are counted in."""
        return self.frozen.tokenizer

    def precompute(self, questions: list[str], names: list[str], progress: bool = True):
        """Compute (or read from the cache) the frozen states of these texts once."""
        return self.frozen.precompute(questions, names, progress)

    def inputs(self, batch: dict) -> dict[str, mx.array]:
        B, Q = batch["q_mask"].shape
        N = batch["item_mask"].shape[1]
        frozen = self.frozen
        descs = [d for key in ("item_descs", "table_descs") for ds in batch.get(key, ()) for d in ds if d]
        frozen.compute(batch["questions"], [t for ts in batch["item_texts"] + batch["table_texts"] for t in ts] + descs)
        q_states = np.zeros((B, Q, 384), np.float32)
        names = np.zeros((B, N, 384), np.float32)
        tables = np.zeros((B, N, 384), np.float32)
        for i, question in enumerate(batch["questions"]):
            st = frozen.pieces[question][:Q]
            q_states[i, :len(st)] = st
            for j, (t, tt) in enumerate(zip(batch["item_texts"][i], batch["table_texts"][i])):
                names[i, j], tables[i, j] = frozen.pooled[t], frozen.pooled[tt]
            if "item_descs" in batch:
                self.describe(names[i], batch["item_descs"][i])
                self.describe(tables[i], batch["table_descs"][i])
        out = {k: mx.array(batch[k]) for k in INPUTS}
        out.update(q_states=mx.array(q_states), item_vec=mx.array(names), item_table_vec=mx.array(tables))
        if self.relations:
            if "relations" not in batch:
                raise ValueError("the relation-aware mixer needs batches from vantage_core.data.actions.collate "
                                 "with the relation features (ACTIONS_VERSION >= 2)")
            out["relations"] = mx.array(batch["relations"])  # (B, Q + N, Q + N) int8
            # the mixer's position-wise layers skip the padding
            out.update(packing_arrays(np.concatenate([batch["q_mask"], batch["item_mask"]], axis=1)))
        return out

    def describe(self, states: np.ndarray, descriptions: list[str]) -> None:
        """Mix each described item's name state (N, 384), in place, with its description's:
        ``(1 - w) * name + w * description`` (``w``: ``description_weight``); a model trained on
        names only reads a state near the name's, moved toward what the description says."""
        w = self.description_weight
        for j, text in enumerate(descriptions):
            if text:
                states[j] = (1 - w) * states[j] + w * self.frozen.pooled[text]

    def memory(self, inputs: dict[str, mx.array]) -> Memory:
        qmask, imask = inputs["q_mask"].astype(mx.bool_), inputs["item_mask"].astype(mx.bool_)
        Q = qmask.shape[1]
        q = self.q_proj(inputs["q_states"])  # (B, Q, d)
        q = q + self.q_pos(mx.minimum(mx.arange(Q), self.max_question - 1)) + self.segment(mx.zeros((Q,), mx.int32))
        items = self.name_proj(inputs["item_vec"]) + self.table_proj(inputs["item_table_vec"])  # (B, N, d)
        items = items + self.item_type(inputs["item_type"]) + self.item_key(inputs["item_key"]) \
            + self.segment(mx.ones((1,), mx.int32))
        if self.link_features:
            q = q + self.links.piece_states(inputs["q_link_table"], inputs["q_link_column"], inputs["q_link_value"])
            items = items + self.links.item_states(inputs["item_link_name"], inputs["item_link_value"])
        x = mx.concatenate([q, items], axis=1)  # (B, Q + N, d)
        mask = mx.concatenate([qmask, imask], axis=1)
        packing = None
        if self.mixer is not None:
            bias = mx.where(mask[:, None, None, :], 0.0, -1e9).astype(x.dtype)
            if self.relations:
                packing = Packing.from_arrays(inputs, mask.shape)
                x = self.mixer(self.drop(x), inputs["relations"], bias, packing)
            else:
                x = self.mixer(self.drop(x), bias)
        return Memory(states=x, mask=mask, items=x[:, Q:], item_mask=imask, question=x[:, :Q], question_mask=qmask,
                      packing=packing)
