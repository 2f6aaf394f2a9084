"""Examples for a pointer model (``data.target: actions``): question pieces, schema items,
schema-linking features and the gold SQL as actions, prepared once per split and cached on disk
by content through the one pipeline (:func:`vantage_core.data.pipeline.prepare_split` with
:class:`ActionRows`).

    split = target_format(cfg.data).prepare("train", question_tokenizer)   # an ActionSplit
    batch = collate(split.feats[:32], split.examples[:32], vocab)   # numpy arrays and texts

The question is cut into the word pieces of the schema encoder's tokenizer (its states and the
copy head's spans are per piece); the items are :func:`vantage_core.data.linking.schema_items`;
the ``schema_linker`` plugin ``data.linker`` gives the linking features.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Iterator

import numpy as np

from vantage_core.data.example import Example
from vantage_core.data.linking import NAME_EXACT, NAME_PARTIAL, PAIR_VALUE, column_values, pair_links, schema_items
from vantage_core.data.pipeline import PreparedSplit
from vantage_core.data.sql_actions import ITEM, QUESTION, VOCAB, SQLCodecError, encode_sql

ACTIONS_VERSION = 2  # bump when the features below change, so caches are rebuilt
ITEM_TYPES = ("table", "text", "number", "time", "boolean", "others")


def question_pieces(question: str, tokenizer: Any) -> tuple[list[int], list[list[int]], list[int | None]]:
    """(piece ids, character offsets, word index or None for [CLS]/[SEP]) of a question."""
    enc = tokenizer.encode(question)
    n = sum(enc.attention_mask)
    return list(enc.ids[:n]), [list(o) for o in enc.offsets[:n]], list(enc.word_ids[:n])  # lists: as JSON reads them back


def featurize(ex: Example, tokenizer: Any, linker: Any, values: dict | None,
              items: list | None = None) -> dict[str, Any]:
    """One example -> its question pieces, items' features, linking features and gold actions
    (``None`` with ``codec_error`` when the codec cannot express the SQL). JSON-serializable.
    ``items``: ``schema_items(ex.schema)`` when the caller has them already."""
    ids, offsets, word_ids = question_pieces(ex.question, tokenizer)
    copyable = [w is not None for w in word_ids]
    words: dict[int, tuple[int, int]] = {}
    for (s, e), w in zip(offsets, word_ids):
        if w is not None:
            words[w] = (words[w][0], e) if w in words else (s, e)
    word_list = [ex.question[s:e] for _, (s, e) in sorted(words.items())]
    items = items if items is not None else schema_items(ex.schema)
    links = linker.link(word_list, items, values)
    order = {w: i for i, w in enumerate(sorted(words))}

    def per_piece(tags: list[int]) -> list[int]:
        return [tags[order[w]] if w is not None else 0 for w in word_ids]

    pieces_of: dict[int, list[int]] = {}  # word -> its pieces
    for p, w in enumerate(word_ids):
        if w is not None:
            pieces_of.setdefault(order[w], []).append(p)
    column_at = {(it.table.lower(), it.column.lower()): k for k, it in enumerate(items) if it.column is not None}
    fk_pairs = [[column_at[(fk.table.lower(), fk.column.lower())], column_at[(fk.ref_table.lower(), fk.ref_column.lower())]]
                for fk in getattr(ex.schema, "foreign_keys", ())
                if (fk.table.lower(), fk.column.lower()) in column_at
                and (fk.ref_table.lower(), fk.ref_column.lower()) in column_at]

    actions, error = None, None
    if ex.sql:
        try:
            actions = [[k, v] for k, v in encode_sql(ex.sql, items, ex.question, offsets, copyable)]
        except SQLCodecError as exc:
            error = str(exc)
    start = [c and (ex.question[s:e][:1].isalnum() or ex.question[s:e][:1] in "%-$")
             for c, (s, e) in zip(copyable, offsets)]  # where a copied value may begin
    return {**descriptions(items), "q_ids": ids, "offsets": offsets, "copy": copyable, "start": start,
            "item_key": [int(it.primary) + 2 * int(it.foreign) for it in items],
            "item_type": [ITEM_TYPES.index(it.col_type) if it.col_type in ITEM_TYPES else len(ITEM_TYPES) - 1
                          for it in items],
            "item_link_name": links.item_name, "item_link_value": links.item_value,
            "q_link_table": per_piece(links.word_table), "q_link_column": per_piece(links.word_column),
            "q_link_value": per_piece(links.word_value), "actions": actions, "codec_error": error,
            # compact inputs of the relation matrix (see relation_matrix)
            "item_table": [it.table_index for it in items], "fk_pairs": fk_pairs,
            "q_item_links": [[p, k, kind] for w, k, kind in pair_links(word_list, items, links, values)
                             for p in pieces_of.get(w, ())],
            "item_texts": [it.text for it in items], "table_texts": [items[it.table_index].text for it in items]}


def descriptions(items: list) -> dict[str, list[str]]:
    """``item_descs`` and ``table_descs`` (per item, its own description and its table's, "" for
    none) where the schema's notes describe any item; nothing otherwise, so the features of a
    schema without notes are what they always were."""
    if not any(it.description for it in items):
        return {}
    return {"item_descs": [it.description for it in items],
            "table_descs": [items[it.table_index].description for it in items]}


def featurize_request(ex: Example, tokenizer: Any, linker: Any, items: list | None = None) -> dict[str, Any]:
    """:func:`featurize` for a question at inference time (reads cell values when the linker uses them)."""
    values = column_values(ex.db_paths[0], ex.schema) if linker.uses_values and ex.db_paths else None
    return featurize(ex, tokenizer, linker, values, items)


@dataclass
class ActionSplit(PreparedSplit):
    """The rows of a pointer model: per example its features (:func:`featurize`, aligned with
    ``examples``), stored as JSON in the ``features`` column."""

    target: ClassVar[str] = "actions"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.feats: list[dict] = [json.loads(text) for text in self.table.column("features").to_pylist()]

    @classmethod
    def of_features(cls, slot: str, examples: list[Example], feats: list[dict]) -> "ActionSplit":
        """A split of given features (one source), as the pipeline would hold them; not cached."""
        import hashlib

        import pyarrow as pa

        columns = feature_columns(feats)
        table = pa.table({"row": np.arange(len(feats), dtype=np.int64), "id": [e.id for e in examples],
                          "source": np.zeros(len(feats), dtype=np.int64), **columns})
        key = hashlib.sha1("\n".join(columns["features"]).encode()).hexdigest()[:20]
        return cls(slot, table, list(examples), [], key)

    def frozen_texts(self) -> tuple[list[str], list[str]]:
        """The questions and the distinct item names, for encoders that precompute states."""
        texts = {t for f in self.feats for t in f["item_texts"] + f["table_texts"]}
        texts |= {t for f in self.feats for t in f.get("item_descs", []) + f.get("table_descs", []) if t}
        names = sorted(texts)
        return [e.question for e in self.examples], names


def feature_columns(feats: list[dict]) -> dict[str, list]:
    """The ``features`` (JSON), ``written`` (the codec wrote the gold SQL as actions) and
    ``sort_key`` columns of featurized examples."""
    # schema size first, then SQL length: batches pad little in either
    return {"features": [json.dumps(f) for f in feats], "written": [f["actions"] is not None for f in feats],
            "sort_key": [1000 * len(f["item_texts"]) + len(f["actions"] or ()) for f in feats]}


CODEC_DROP = "SQL the action codec cannot express (self-joins, unknown names)"


@dataclass
class ActionRows:
    """:class:`~vantage_core.data.pipeline.RowEncoder` of ``data.target: actions``: :func:`featurize`
    with the schema encoder's question ``tokenizer`` and the schema ``linker`` (built from
    ``linker_spec``); a training row is dropped when the codec cannot write its SQL."""

    tokenizer: Any
    linker: Any
    linker_spec: Any

    name: ClassVar[str] = "actions"
    split_type: ClassVar[type[PreparedSplit]] = ActionSplit
    columns: ClassVar[tuple[str, ...]] = ("features", "written")

    def fingerprint(self) -> Any:
        tok = self.tokenizer
        spec = self.linker_spec.model_dump() if hasattr(self.linker_spec, "model_dump") else self.linker_spec
        return [self.name, ACTIONS_VERSION, tok.get_vocab_size() if hasattr(tok, "get_vocab_size") else repr(tok), spec]

    def encode(self, examples: list[Example], desc: str, progress: bool) -> dict[str, list]:
        from tqdm.auto import tqdm

        feats = []
        for ex in tqdm(examples, desc=desc, unit="ex", disable=not progress, dynamic_ncols=True):
            feats.append(featurize_request(ex, self.tokenizer, self.linker))
        return feature_columns(feats)

    def drops(self, table: Any) -> dict[str, np.ndarray]:
        return {CODEC_DROP: ~table.column("written").to_numpy(zero_copy_only=False).astype(bool)}


def vocab_corpus(split: ActionSplit) -> Iterator[str]:
    """Every keyword action of the split's gold SQL (what the ``sql_actions`` vocabulary learns)."""
    for f in split.feats:
        for kind, value in f["actions"] or ():
            if kind == VOCAB:
                yield value


def unified_ids(actions: Iterable, vocab: Any, n_items: int) -> list[int]:
    """Actions -> ids of the model's output space: vocabulary ids, then ``V + item``, then
    ``V + n_items + piece`` (``n_items``: the batch's padded item count)."""
    V = vocab.vocab_size
    return [vocab.encode(v)[0] if k == VOCAB else V + v if k == ITEM else V + n_items + v for k, v in actions]


def to_actions(ids: Iterable[int], vocab: Any, n_items: int) -> list[tuple[int, Any]]:
    """The inverse of :func:`unified_ids` (vocabulary actions as their tokens)."""
    V = vocab.vocab_size
    return [(VOCAB, vocab.id_to_piece(i)) if i < V else (ITEM, i - V) if i < V + n_items else (QUESTION, i - V - n_items)
            for i in ids]


# Relations between the positions of the ``linked`` encoder's sequence [question pieces; items], one
# id per ordered pair (RAT-SQL's): question pieces by relative distance; a piece and an item by the
# linker's match (none, partial or exact name, cell value), both directions; a column and a table
# (its own table, of which it is the primary key, another); two columns (same table, foreign key
# either way); two tables (foreign keys between them). 0 is padding.
RELATIONS = ("pad", "qq-2", "qq-1", "qq0", "qq+1", "qq+2",
             "q-col", "q-col-partial", "q-col-exact", "q-col-value", "q-table", "q-table-partial", "q-table-exact",
             "col-q", "col-q-partial", "col-q-exact", "col-q-value", "table-q", "table-q-partial", "table-q-exact",
             "col-self", "col-same-table", "col-fk", "col-fk-rev", "col-col",
             "col-table-own", "col-table-pk", "col-table", "table-col-own", "table-col-pk", "table-col",
             "table-self", "table-fk", "table-fk-rev", "table-fk-both", "table-table")
REL = {name: i for i, name in enumerate(RELATIONS)}
assert (REL["q-col-partial"] - REL["q-col"], REL["q-col-exact"] - REL["q-col"], REL["q-col-value"] - REL["q-col"]) \
    == (NAME_PARTIAL, NAME_EXACT, PAIR_VALUE)  # q_item_links kinds are offsets from the "none" relation


def relation_matrix(feats: list[dict], Q: int, N: int) -> np.ndarray:
    """(B, Q + N, Q + N) int8 ids of :data:`RELATIONS`, from each example's compact features
    (``item_table``, ``item_type``, ``item_key``, ``fk_pairs``, ``q_item_links``); row i, column j:
    how position i relates to position j (question pieces first, then items, as the encoder's mixer
    sees them). Padded positions keep what their row/column type gives; the mixer masks them."""
    B = len(feats)
    rel = np.zeros((B, Q + N, Q + N), np.int8)
    d = np.arange(Q)
    rel[:, :Q, :Q] = np.clip(d[None, :] - d[:, None], -2, 2) + REL["qq0"]
    for b, f in enumerate(feats):
        q, n = len(f["q_ids"]), len(f["item_texts"])
        tab, pk = np.asarray(f["item_table"], np.int64), (np.asarray(f["item_key"]) & 1).astype(bool)
        is_tab = np.asarray(f["item_type"]) == ITEM_TYPES.index("table")
        to_item = np.where(is_tab, REL["q-table"], REL["q-col"])
        from_item = np.where(is_tab, REL["table-q"], REL["col-q"])
        rel[b, :q, Q:Q + n] = to_item[None]
        rel[b, Q:Q + n, :q] = from_item[:, None]
        links = np.asarray(f["q_item_links"], np.int64).reshape(-1, 3)
        p, k, kind = links[:, 0], links[:, 1], links[:, 2]
        rel[b, p, Q + k] = to_item[k] + kind
        rel[b, Q + k, p] = from_item[k] + kind
        own = tab[:, None] == np.arange(n)[None, :]  # item j is item i's table (tables come first)
        fk = np.zeros((n, n), bool)
        for i, j in f["fk_pairs"]:
            fk[i, j] = True
        cc = np.where(fk, REL["col-fk"], np.where(fk.T, REL["col-fk-rev"],
                      np.where(tab[:, None] == tab[None, :], REL["col-same-table"], REL["col-col"])))
        ct = np.where(own, np.where(pk[:, None], REL["col-table-pk"], REL["col-table-own"]), REL["col-table"])
        tc = np.where(own.T, np.where(pk[None, :], REL["table-col-pk"], REL["table-col-own"]), REL["table-col"])
        tfk = np.zeros((n, n), bool)
        tfk[tab[fk.nonzero()[0]], tab[fk.nonzero()[1]]] = True  # a column of table i references one of table j
        tt = np.where(tfk & tfk.T, REL["table-fk-both"], np.where(tfk, REL["table-fk"],
                      np.where(tfk.T, REL["table-fk-rev"], REL["table-table"])))
        np.fill_diagonal(cc, REL["col-self"])
        np.fill_diagonal(tt, REL["table-self"])
        ti, tj = is_tab[:, None], is_tab[None, :]
        rel[b, Q:Q + n, Q:Q + n] = np.select([ti & tj, ti & ~tj, ~ti & tj], [tt, tc, ct], cc)
    return rel


ITEM_FIELDS = ("item_type", "item_key", "item_link_name", "item_link_value")
PIECE_FIELDS = ("q_ids", "q_link_table", "q_link_column", "q_link_value")


def collate(feats: list[dict], examples: list[Example], vocab: Any, with_targets: bool = True) -> dict[str, Any]:
    """Pad featurized examples into one host-side batch.

    ``q_mask``/``q_copy``/``q_start`` (B, Q) bool and the piece features (B, Q) int32;
    ``item_mask`` (B, N) and the item features (B, N); ``relations`` (B, Q + N, Q + N) int8
    (:func:`relation_matrix`); the texts ``questions``, ``item_texts``,
    ``table_texts`` (for the encoder's frozen states; with ``item_descs`` and ``table_descs``
    where notes describe items); with targets, ``tokens``, ``targets``,
    ``loss_mask``, ``padding_mask`` (B, T) over the unified output space.
    """
    B = len(feats)
    Q = max(len(f["q_ids"]) for f in feats)
    N = max(len(f["item_texts"]) for f in feats)
    b: dict[str, Any] = {"q_mask": np.zeros((B, Q), bool), "q_copy": np.zeros((B, Q), bool),
                         "q_start": np.zeros((B, Q), bool), "item_mask": np.zeros((B, N), bool)}
    for name in ITEM_FIELDS:
        b[name] = np.zeros((B, N), np.int32)
    for name in PIECE_FIELDS:
        b[name] = np.zeros((B, Q), np.int32)
    for i, f in enumerate(feats):
        q, n = len(f["q_ids"]), len(f["item_texts"])
        b["q_mask"][i, :q], b["q_copy"][i, :q], b["q_start"][i, :q] = True, f["copy"], f["start"]
        b["item_mask"][i, :n] = True
        for name in ITEM_FIELDS:
            b[name][i, :n] = f[name]
        for name in PIECE_FIELDS:
            b[name][i, :q] = f[name]
    if all("q_item_links" in f for f in feats):  # features of ACTIONS_VERSION >= 2
        b["relations"] = relation_matrix(feats, Q, N)
    b["questions"] = [e.question for e in examples]
    b["item_texts"] = [f["item_texts"] for f in feats]
    b["table_texts"] = [f["table_texts"] for f in feats]
    if any("item_descs" in f for f in feats):  # schema notes describe some items
        for key in ("item_descs", "table_descs"):
            b[key] = [f.get(key) or [""] * len(f["item_texts"]) for f in feats]
    b["example_ids"] = [e.id for e in examples]
    if with_targets:
        seqs = [[vocab.bos_id] + unified_ids(f["actions"], vocab, N) + [vocab.eos_id] for f in feats]
        T = max(len(s) for s in seqs) - 1
        tokens = np.full((B, T), vocab.pad_id, np.int32)
        targets = np.full((B, T), vocab.pad_id, np.int32)
        mask = np.zeros((B, T), np.float32)
        for i, s in enumerate(seqs):
            tokens[i, :len(s) - 1], targets[i, :len(s) - 1], mask[i, :len(s) - 1] = s[:-1], s[1:], 1.0
        b.update(tokens=tokens, targets=targets, loss_mask=mask, padding_mask=mask.copy())
    return b


# Link dropout (``data.link_dropout``): in training batches only, some schema items lose their
# name matches, so the model also learns to link question words to names it does not spell the
# same way (synonyms) from the encoder's states. Cell-value matches stay.
NAME_KINDS = (NAME_PARTIAL, NAME_EXACT)
LINK_DROPOUT_STREAM = 0x6C696E6B  # keeps these draws apart from every other seeded stream


def hidden_items(p: float, seed: int, batch_index: int, row: int, n_items: int) -> np.ndarray:
    """(n_items,) bool: which items of row ``row`` lose their name matches in global training batch
    ``batch_index`` (each with probability ``p``). A function of its arguments only: a resumed run
    draws what an uninterrupted one drew, whatever the number of processes."""
    rng = np.random.default_rng([LINK_DROPOUT_STREAM, seed, batch_index, row])
    return rng.random(n_items) < p


def without_name_links(f: dict, hide: np.ndarray) -> dict:
    """One example's features in which the items ``hide`` marks match no question piece by name:
    their ``item_link_name`` is 0, their name pairs leave ``q_item_links`` (value pairs stay), and a
    piece's ``q_link_table`` / ``q_link_column`` tag that came from a hidden item becomes the best
    tag its remaining name pairs give (0 when none). A new dict; ``f`` is left as it is (and
    returned when no hidden item had a name match)."""
    if not any(hide[k] and v for k, v in enumerate(f["item_link_name"])):
        return f
    is_table = np.asarray(f["item_type"]) == ITEM_TYPES.index("table")
    tag_field = ["q_link_table" if t else "q_link_column" for t in is_table]  # per item: the tags it sets
    hidden = [hide[k] and kind in NAME_KINDS for _, k, kind in f["q_item_links"]]
    kept = [link for link, h in zip(f["q_item_links"], hidden) if not h]
    touched = {(p, tag_field[k]) for (p, k, _), h in zip(f["q_item_links"], hidden) if h}
    tags = {"q_link_table": list(f["q_link_table"]), "q_link_column": list(f["q_link_column"])}
    for p, name in touched:
        tags[name][p] = 0
    for p, k, kind in kept:
        if kind in NAME_KINDS and (p, tag_field[k]) in touched:
            tags[tag_field[k]][p] = max(tags[tag_field[k]][p], kind)
    return {**f, **tags, "q_item_links": kept,
            "item_link_name": [0 if hide[k] else v for k, v in enumerate(f["item_link_name"])]}


def collate_rows(split: ActionSplit, rows: np.ndarray, vocab: Any, link_dropout: float = 0.0, seed: int = 0,
                 batch_index: int = 0) -> dict[str, Any]:
    """:func:`collate` of rows ``rows`` of a split (``rows`` kept, as the token batches do). With
    ``link_dropout`` > 0 (training batches only), each item of each row loses its name matches with
    that probability (:func:`hidden_items`, drawn from ``seed`` and the global ``batch_index``)."""
    rows = np.asarray(rows, dtype=np.int64)
    feats = [split.feats[r] for r in rows]
    if link_dropout > 0:
        feats = [without_name_links(f, hidden_items(link_dropout, seed, batch_index, int(r), len(f["item_texts"])))
                 for f, r in zip(feats, rows)]
    batch = collate(feats, [split.examples[r] for r in rows], vocab)
    batch["rows"] = rows
    return batch


__all__ = ["RELATIONS", "ActionRows", "ActionSplit", "collate", "collate_rows", "featurize", "featurize_request",
           "hidden_items", "relation_matrix", "to_actions", "unified_ids", "vocab_corpus", "without_name_links"]
