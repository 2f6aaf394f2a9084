"""A schema-pointing text-to-SQL model: the decoder names tables and columns by pointing at the
encoded schema items of the given database, and copies values as spans of the question.

Why: a decoder that spells names from a subword vocabulary memorises the training schemas and
does not transfer to unseen databases (issue 8: 0.9% execution accuracy). Pointing makes every
schema name a choice among the items of *this* database, scored by their encoded states, the
way IRNet and RAT-SQL do it; the question is encoded by the frozen MiniLM, the items by MiniLM
embeddings of their natural names plus the linking features of
:mod:`vantage_plugins.schema_encoders.linked`, and a small trainable encoder mixes the two.

Pieces:
- :func:`encode_sql` / :func:`render_sql`: gold SQL <-> actions (vocabulary tokens, schema
  item pointers, question spans), FROM clause first. Aliases are resolved (``T1.name`` -> ``singer.name``), so the
  rendered SQL names every column as ``table.column``.
- :class:`PointerSQL`: encoder + decoder (the project's :class:`DecoderLayer`, so the feed-forward
  blocks are the configured MoE router/experts) + three output heads in one softmax.
- :func:`beam_search`: batched beam search where only valid actions are allowed (schema items
  of this database, question spans after a value marker, balanced parentheses).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

import mlx.core as mx
import mlx.nn as nn

from vantage_plugins.schema_encoders.linked import LinkEmbedding, SchemaItem

VOCAB, ITEM, QUESTION = 0, 1, 2
PAD, BOS, EOS, VAL, LIKEVAL, NUM, UNK_LIT = "<pad>", "<s>", "</s>", "<val>", "<likeval>", "<num>", "<lit>"
SPECIALS = [PAD, BOS, EOS, VAL, LIKEVAL, NUM, UNK_LIT]
VALUE_MARKERS = (VAL, LIKEVAL, NUM)
KEYWORDS = frozenset(
    "select from where group by order having limit join on as and or not in like between is null distinct "
    "count sum avg min max asc desc union intersect except exists inner left outer cross natural case when "
    "then else end cast all".split())
ITEM_TYPES = ("table", "text", "number", "time", "boolean", "others")
MAX_SPAN = 16  # longest copied value, in question word pieces

_SQL_TOKEN = re.compile(r"""\s*(?:('(?:[^']|'')*')|("[^"]*")|(\d+(?:\.\d+)?)|"""
                        r"""([A-Za-z_][A-Za-z0-9_]*(?:\.(?:[A-Za-z_][A-Za-z0-9_]*|\*))?)|"""
                        r"""(>=|<=|!=|<>|==|\|\||[(),*=<>+\-/%;.]))""")


class SQLCodecError(ValueError):
    """Gold SQL this codec cannot express (self-joins, conflicting aliases, unknown names)."""


def sql_tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) tokens: kind in str, num, ident, op."""
    out, pos, sql = [], 0, sql.strip().rstrip(";")
    while pos < len(sql):
        m = _SQL_TOKEN.match(sql, pos)
        if not m or m.end() == pos:
            if sql[pos:].strip() == "":
                break
            raise SQLCodecError(f"cannot tokenize at {sql[pos:pos + 20]!r}")
        pos = m.end()
        s1, s2, num, ident, op = m.groups()
        if s1 is not None:
            out.append(("str", s1[1:-1].replace("''", "'")))
        elif s2 is not None:
            out.append(("str", s2[1:-1]))
        elif num is not None:
            out.append(("num", num))
        elif ident is not None:
            out.append(("ident", ident))
        elif op is not None:
            out.append(("op", op))
    return out


def find_span(value: str, question: str, offsets: list[tuple[int, int]], copyable: list[bool]) -> tuple[int, int] | None:
    """Word-piece span (start, end inclusive) whose text is ``value`` (case-insensitively)."""
    if not value:
        return None
    low, v = question.lower(), value.lower()
    starts = {o[0]: i for i, o in enumerate(offsets) if copyable[i]}
    ends = {o[1]: i for i, o in enumerate(offsets) if copyable[i]}
    p = low.find(v)
    while p >= 0:
        if p in starts and p + len(v) in ends and ends[p + len(v)] - starts[p] < MAX_SPAN:
            return starts[p], ends[p + len(v)]
        p = low.find(v, p + 1)
    return None


def _query_blocks(toks: list[tuple[str, str]]) -> list[int]:
    """The query block (top level, each ``( SELECT ...)`` subquery, each side of a set
    operation) every token belongs to, so a bare column resolves among its own block's tables."""
    out, stack, depth_of, fresh = [], [0], [], 1
    for i, (kind, text) in enumerate(toks):
        low = text.lower()
        if text == "(" and i + 1 < len(toks) and toks[i + 1][1].lower() == "select":
            stack.append(fresh)
            depth_of.append(True)
            fresh += 1
        elif text == "(":
            depth_of.append(False)
        elif text == ")" and depth_of:
            if depth_of.pop():
                out.append(stack.pop())
                continue
        elif low in ("union", "intersect", "except"):
            stack[-1] = fresh
            fresh += 1
        out.append(stack[-1])
    return out


def encode_sql(sql: str, items: list[SchemaItem], question: str, offsets, copyable) -> list[tuple[int, object]]:
    """Gold SQL -> actions ``(VOCAB, token) | (ITEM, index) | (QUESTION, piece)``; raises
    :class:`SQLCodecError` for queries the codec cannot express."""
    toks = sql_tokens(sql)
    tables = {it.table.lower(): i for i, it in enumerate(items) if it.column is None}
    columns = {(it.table.lower(), it.column.lower()): i for i, it in enumerate(items) if it.column is not None}
    alias, drop = {}, set()
    for i, (kind, text) in enumerate(toks):
        if kind == "ident" and text.lower() in tables and i + 1 < len(toks):
            j = i + 1
            if toks[j] == ("ident", toks[j][1]) and toks[j][1].lower() == "as" and j + 1 < len(toks):
                j += 1
            name = toks[j][1].lower()
            if toks[j][0] == "ident" and name not in KEYWORDS and name not in tables and (j > i + 1 or re.fullmatch(r"t\d+", name)):
                if alias.get(name, text.lower()) != text.lower():
                    raise SQLCodecError(f"alias {name} names two tables")
                alias[name] = text.lower()
                drop.update(range(i + 1, j + 1))
    if len(set(alias.values())) < len(alias):
        raise SQLCodecError("self-join (one table under two aliases)")
    from_tables = [t.lower() for k, t in toks if k == "ident" and t.lower() in tables]
    blocks = _query_blocks(toks)
    block_tables: dict[int, list[str]] = {}
    for (k, t), blk in zip(toks, blocks):
        if k == "ident" and t.lower() in tables:
            block_tables.setdefault(blk, []).append(t.lower())
    actions: list[tuple[int, object]] = []
    for i, (kind, text) in enumerate(toks):
        if i in drop:
            continue
        low = text.lower()
        if kind in ("str", "num"):
            core, marker = text, (NUM if kind == "num" else VAL)
            if kind == "str" and len(text) > 1 and text.startswith("%") and text.endswith("%"):
                core, marker = text.strip("%"), LIKEVAL
            span = find_span(core, question, offsets, copyable)
            if span is not None:
                actions += [(VOCAB, marker), (QUESTION, span[0]), (QUESTION, span[1])]
            else:
                actions.append((VOCAB, ("'" + text.replace("'", "''") + "'") if kind == "str" else text))
        elif kind == "ident" and "." in text:
            left, right = low.split(".", 1)
            table = alias.get(left, left)
            if right == "*" or (table, right) not in columns:
                raise SQLCodecError(f"unknown column {text}")
            actions.append((ITEM, columns[(table, right)]))
        elif kind == "ident" and low in KEYWORDS:
            actions.append((VOCAB, low))
        elif kind == "ident":
            prev = toks[i - 1][1].lower() if i else ""
            owners = [t for t in block_tables.get(blocks[i], []) if (t, low) in columns] or \
                     [t for t in from_tables if (t, low) in columns]
            if low in tables and (prev in ("from", "join", ",") and (prev != "," or not owners) or not owners):
                actions.append((ITEM, tables[low]))
            elif owners:
                actions.append((ITEM, columns[(owners[0], low)]))
            else:
                raise SQLCodecError(f"unknown name {text}")
        else:
            actions.append((VOCAB, "!=" if text == "<>" else text))
    return reorder(actions, from_first=True)


SET_OPS = ("union", "intersect", "except")
CLAUSES = ("where", "group", "order", "having", "limit")


def _tok(action) -> str | None:
    return action[1] if action[0] == VOCAB else None


def reorder(actions: list, from_first: bool) -> list:
    """Move every query block's FROM clause before its SELECT (``from_first``), or back.

    With FROM first, a left-to-right decoder has named a block's tables before it names their
    columns, so decoding can allow only columns of those tables (SELECT-first SQL cannot)."""
    parts, cur, depth = [], [], 0
    for a in actions:
        t = _tok(a)
        depth += (t == "(") - (t == ")")
        if depth == 0 and t in SET_OPS:
            parts += [_reorder_side(cur, from_first), [a]]
            cur = []
        else:
            cur.append(a)
    parts.append(_reorder_side(cur, from_first))
    return [a for p in parts for a in p]


def _reorder_side(acts: list, from_first: bool) -> list:
    head = "select" if from_first else "from"
    out, i = [], 0
    while i < len(acts):  # subqueries first
        if _tok(acts[i]) == "(" and i + 1 < len(acts) and _tok(acts[i + 1]) == head:
            depth, j = 0, i
            while j < len(acts):
                depth += (_tok(acts[j]) == "(") - (_tok(acts[j]) == ")")
                if depth == 0:
                    break
                j += 1
            out += [acts[i]] + reorder(acts[i + 1:j], from_first) + acts[j:j + 1]
            i = j + 1
        else:
            out.append(acts[i])
            i += 1
    top, depth = [], 0
    for k, a in enumerate(out):  # depth-0 positions of clause keywords
        t = _tok(a)
        if depth == 0 and t in ("select", "from") + CLAUSES:
            top.append((k, t))
        depth += (t == "(") - (t == ")")
    if from_first:
        f = next((k for k, t in top if t == "from"), None)
        if f is None:
            return out
        e = next((k for k, t in top if k > f and t in CLAUSES), len(out))
        return out[f:e] + out[:f] + out[e:]
    sel = next((k for k, t in top if t == "select"), None)
    if sel is None or not top or top[0][1] != "from":
        return out
    e = next((k for k, t in top if k > sel and t in CLAUSES), len(out))
    return out[sel:e] + out[:sel] + out[e:]


def _quote(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else '"' + name.replace('"', '""') + '"'


def render_sql(actions: list[tuple[int, object]], items: list[SchemaItem], question: str, offsets,
               db_values: dict[str, str] | None = None) -> str:
    """Actions -> SQL text (every column as ``table.column``). ``db_values``: lower-cased cell
    value -> the value as stored, so a copied "france" is written as the database's "France"."""
    actions = reorder(list(actions), from_first=False)
    out, i = [], 0
    while i < len(actions):
        kind, val = actions[i]
        if kind == VOCAB and val in VALUE_MARKERS and i + 2 < len(actions) + 1:
            (k1, s), (k2, e) = (actions[i + 1] if i + 1 < len(actions) else (None, 0)), \
                               (actions[i + 2] if i + 2 < len(actions) else (None, 0))
            if k1 != QUESTION or k2 != QUESTION:
                out.append("''")
                i += 1
                continue
            text = question[offsets[s][0]:offsets[max(s, e)][1]]
            if val == NUM:
                out.append(text if re.fullmatch(r"-?\d+(\.\d+)?", text) else "'" + text.replace("'", "''") + "'")
            else:
                if db_values and val == VAL:
                    text = db_values.get(text.lower(), text)
                text = f"%{text}%" if val == LIKEVAL else text
                out.append("'" + text.replace("'", "''") + "'")
            i += 3
            continue
        if kind == ITEM:
            it = items[val]
            out.append(_quote(it.table) if it.column is None else f"{_quote(it.table)}.{_quote(it.column)}")
        elif kind == VOCAB:
            out.append("" if val in (BOS, EOS, PAD) else (UNK_LIT if val == UNK_LIT else str(val)))
        i += 1
    return " ".join(t for t in out if t).replace(UNK_LIT, "''")


# ------------------------------------------------------------------------------------------ model


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


# ------------------------------------------------------------------------------------ decoding


@dataclass
class Hyp:
    actions: list
    score: float
    need: int = 0  # 2: a value marker wants its start piece; 1: its end piece
    start: int = 0
    depth: int = 0
    blocks: tuple = ((),)  # tables named by each open query block, innermost last
    parens: tuple = ()  # per open "(": True when it opened a subquery


def _allowed(h: Hyp, V: int, N: int, Q: int, vocab_ok: np.ndarray, item_ok: np.ndarray, q_ok: np.ndarray,
             ids: dict, constrained: bool, q_start: np.ndarray | None = None,
             items: list[SchemaItem] | None = None, itos: list[str] | None = None,
             fks: dict[int, set[int]] | None = None) -> np.ndarray:
    """Additive mask (V + N + Q,) of the actions valid after ``h``."""
    m = np.full(V + N + Q, -np.inf, dtype=np.float32)
    q_start = q_ok if q_start is None else q_start & q_ok
    if not constrained:
        m[:V] = 0
        m[ids[PAD]] = m[ids[BOS]] = -np.inf
        m[V:V + N][item_ok] = 0
        m[V + N:][q_ok] = 0
        return m
    if h.need == 2:
        m[V + N:][q_start] = 0
    elif h.need == 1:
        lo, hi = h.start, min(Q, h.start + MAX_SPAN)
        sel = np.zeros(Q, bool)
        sel[lo:hi] = True
        m[V + N:][sel & q_ok] = 0
    else:
        m[:V][vocab_ok] = 0
        last = itos[h.actions[-1][1]] if h.actions[-1][0] == VOCAB else None
        if items is not None:  # FROM-first: tables right after from/join, else visible columns
            named = h.blocks[-1]
            visible = {t for blk in h.blocks for t in blk}
            ok = np.zeros(N, bool)
            for j, it in enumerate(items):
                if it.column is None:
                    ok[j] = last in ("from", "join") and it.table_index not in named
                else:
                    ok[j] = it.table_index in visible and last not in ("from", "join")
            if last == "=" and len(h.actions) >= 3 and h.actions[-2][0] == ITEM and _tok_id(h.actions[-3], itos) == "on":
                # a join condition relates two different tables: "on a.x = a.y" never joins
                first = h.actions[-2][1]
                same = items[first].table_index
                other = np.zeros(N, bool)
                other[:len(items)] = [it.column is not None and it.table_index != same for it in items]
                ok &= other
                partners = np.zeros(N, bool)
                for p in (fks or {}).get(first, ()):
                    partners[p] = True
                if (ok & partners).any():  # 96% of Spider's join conditions follow a foreign key
                    ok &= partners
                m[:V] = -np.inf
            elif last == "on" and fks and len(h.actions) >= 2 and h.actions[-2][0] == ITEM:
                joined = items[h.actions[-2][1]].table_index
                before = set(named) - {joined}
                linked = np.zeros(N, bool)
                for a_idx, partners in fks.items():
                    ta = items[a_idx].table_index
                    for p in partners:
                        tb = items[p].table_index
                        if (ta == joined and tb in before) or (tb == joined and ta in before):
                            linked[a_idx] = True
                if (ok & linked).any():
                    ok &= linked
            m[V:V + N][item_ok & ok] = 0
            if last in ("from", "join"):
                m[:V] = -np.inf
        else:
            m[V:V + N][item_ok] = 0
        if h.depth == 0:
            m[ids[")"]] = -np.inf
        if h.depth > 0 or len(h.actions) < 2:
            m[ids[EOS]] = -np.inf
    if not np.isfinite(m).any():
        m[ids[EOS]] = 0
    return m


def fk_partners(items: list[SchemaItem], foreign_keys) -> dict[int, set[int]]:
    """Column item -> the column items it is joined to by a foreign key (both directions).
    ``foreign_keys``: objects or dicts with table, column, ref_table, ref_column."""
    index = {(it.table.lower(), it.column.lower()): i for i, it in enumerate(items) if it.column is not None}
    out: dict[int, set[int]] = {}
    for fk in foreign_keys:
        get = fk.get if isinstance(fk, dict) else lambda k, fk=fk: getattr(fk, k)
        a = index.get((get("table").lower(), get("column").lower()))
        b = index.get((get("ref_table").lower(), get("ref_column").lower()))
        if a is not None and b is not None and a != b:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


def _tok_id(action, itos: list[str]) -> str | None:
    return itos[action[1]] if action[0] == VOCAB else None


def _advance(h: Hyp, kind: int, value: int, score: float, itos: list[str], items=None) -> Hyp:
    n = Hyp(h.actions + [(kind, value)], score, h.need, h.start, h.depth, h.blocks, h.parens)
    if kind == VOCAB:
        tok = itos[value]
        last = itos[h.actions[-1][1]] if h.actions[-1][0] == VOCAB else None
        if tok in VALUE_MARKERS:
            n.need = 2
        n.depth += tok == "("
        n.depth -= tok == ")"
        if tok == "(":
            n.parens = h.parens + (False,)
        elif tok == "from" and last == "(" and h.parens:  # a subquery opens a block
            n.parens = h.parens[:-1] + (True,)
            n.blocks = h.blocks + ((),)
        elif tok == ")" and h.parens:
            n.parens = h.parens[:-1]
            if h.parens[-1]:
                n.blocks = h.blocks[:-1]
        elif tok in SET_OPS:
            n.blocks = h.blocks[:-1] + ((),)
    elif kind == ITEM and items is not None and items[value].column is None:
        n.blocks = h.blocks[:-1] + (h.blocks[-1] + (items[value].table_index,),)
    elif kind == QUESTION:
        if h.need == 2:
            n.need, n.start = 1, value
        elif h.need == 1:
            n.need = 0
    return n


def beam_search(model: PointerSQL, b: dict, itos: list[str], beam: int = 4, max_steps: int = 80,
                constrained: bool = True, items: list[list[SchemaItem]] | None = None,
                fks: list[dict[int, set[int]]] | None = None) -> list[list[tuple[list, float]]]:
    """Batched beam search; per example, up to ``beam`` finished (actions, log-prob) best first.
    Actions are ``(kind, value)`` with vocabulary values as ids. With ``constrained`` and the
    examples' schema ``items``, SQL is decoded FROM-first (see :func:`reorder`): a table only
    right after FROM/JOIN and never twice in one block, a column only of a table already named;
    with ``fks`` (per example, :func:`fk_partners`) a join condition follows a foreign key
    between the joined table and one named before, where there is one."""
    ids = {t: i for i, t in enumerate(itos)}
    V = len(itos)
    q, it, qm, im = model.encode(b)
    B, Q, N = q.shape[0], q.shape[1], it.shape[1]
    qm_np, im_np, copy_np = np.array(qm), np.array(im), np.array(b["q_copy"])
    start_np = np.array(b["q_start"]) if "q_start" in b else None  # pieces a value may start with
    vocab_ok = np.ones(V, bool)
    vocab_ok[[ids[PAD], ids[BOS]]] = False
    live = [[Hyp([(VOCAB, ids[BOS])], 0.0)] for _ in range(B)]
    done: list[list[tuple[list, float]]] = [[] for _ in range(B)]
    for _ in range(max_steps):
        rows = [(i, h) for i in range(B) for h in live[i]]
        if not rows:
            break
        T = max(len(h.actions) for _, h in rows)
        kinds = np.zeros((len(rows), T), np.int32)
        vals = np.zeros((len(rows), T), np.int32)
        last = np.zeros(len(rows), np.int32)
        for r, (_, h) in enumerate(rows):  # left-aligned; read the score at each row's last step
            for t, (k, v) in enumerate(h.actions):
                kinds[r, t], vals[r, t] = k, v
            last[r] = len(h.actions) - 1
        sel = mx.array(np.array([i for i, _ in rows], np.int32))
        scores, _ = model.decode(mx.array(kinds), mx.array(vals), q[sel], it[sel], qm[sel], im[sel])
        scores = scores[mx.arange(len(rows)), mx.array(last)]  # (R, V + N + Q)
        logp = np.array(scores - mx.logsumexp(scores, axis=-1, keepdims=True))
        new_live: list[list[Hyp]] = [[] for _ in range(B)]
        cands: dict[int, list[tuple[float, Hyp, int]]] = {}
        for r, (i, h) in enumerate(rows):
            m = _allowed(h, V, N, Q, vocab_ok, im_np[i], qm_np[i] & copy_np[i], ids, constrained,
                         start_np[i] if start_np is not None else None, items[i] if items else None, itos,
                         fks[i] if fks else None)
            lp = logp[r] + m
            top = np.argpartition(-lp, min(beam, lp.size - 1))[:beam]
            for a in top:
                if np.isfinite(lp[a]):
                    cands.setdefault(i, []).append((h.score + float(lp[a]), h, int(a)))
        for i, cs in cands.items():
            cs.sort(key=lambda c: -c[0])
            for score, h, a in cs:
                if len(new_live[i]) >= beam:
                    break
                kind, value = (VOCAB, a) if a < V else (ITEM, a - V) if a < V + N else (QUESTION, a - V - N)
                if kind == VOCAB and a == ids[EOS]:
                    done[i].append((h.actions[1:], score))
                    continue
                new_live[i].append(_advance(h, kind, value, score, itos, items[i] if items else None))
        for i in range(B):  # stop an example once its best finished beats every live prefix
            if done[i] and len(done[i]) >= beam and max(s for _, s in done[i]) >= max((h.score for h in new_live[i]), default=-np.inf):
                new_live[i] = []
        live = new_live
    for i in range(B):
        if not done[i]:
            done[i] = [(h.actions[1:], h.score) for h in live[i]]
        done[i].sort(key=lambda c: -c[1])
        done[i] = done[i][:beam]
    return done
