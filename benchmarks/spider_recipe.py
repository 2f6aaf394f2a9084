"""Spider on this CPU: train the schema-pointing model on the training databases, score the
held-out databases with the project's own Spider metrics.

    python benchmarks/spider_recipe.py prepare --config configs/spider_cpu.yaml
    python benchmarks/spider_recipe.py train   --config configs/spider_cpu.yaml [--set train.minutes=45]
    python benchmarks/spider_recipe.py evaluate --config configs/spider_cpu.yaml [--set decode.beam=1]

``prepare`` runs the frozen MiniLM once over every question and schema name and caches the
states with the linking features (``<run dir>/cache.pkl``); ``train`` trains for
``train.minutes`` and keeps the checkpoint with the best held-out action accuracy;
``evaluate`` decodes the held-out databases (beam search with the validity constraints, then
execution-guided choice) and writes ``results.jsonl``/``summary.*`` via
``vantage_core.evaluate.evaluate_predictions``. Data: ``$VANTAGE_SHARED_DATA`` or
``../shared/data`` (``spider/``).
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import vantage_core  # noqa: F401  (loads OpenBLAS before mlx)

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten

from vantage_core.data.linking import cased_values, column_values, schema_items
from vantage_core.data.sql_actions import (BOS, EOS, ITEM, SPECIALS, UNK_LIT, VOCAB, SQLCodecError, encode_sql,
                                           render_sql)
from vantage_core.errors import ConfigError, PluginError
from vantage_core.inference.pointer_search import beam_search, fk_partners
from vantage_core.model.pointer import ITEM_TYPES, PointerArgs, PointerSQL, pointer_loss


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecipePlugin(_Section):
    """A registered plugin chosen by name: ``{name: lexical, params: {cell_values: true}}``."""

    name: str
    params: dict[str, Any] = {}


class RecipeData(_Section):
    path: str | None = None  # the Spider folder; None: shared data
    holdout_fraction: float = Field(0.15, gt=0, lt=1)
    holdout_seed: int = 0
    linker: RecipePlugin = RecipePlugin(name="lexical", params={"cell_values": True})  # a schema_linker plugin
    min_literal_count: int = Field(2, ge=1)  # rarer literals not in the question become <lit>


class RecipeModel(_Section):
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn_hidden: int = 512
    dropout: float = 0.1
    question_input: str = Field("minilm", pattern="^(minilm|embed)$")
    link_features: bool = True
    num_experts: int = 4
    moe_every: int = 1
    router: dict = {"name": "topk", "params": {"k": 2}}
    expert: dict = {"name": "swiglu", "params": {}}


class RecipeTrain(_Section):
    minutes: float = Field(45, gt=0)
    max_epochs: int = 100
    max_steps: int | None = None  # stop after this many steps (ablations: equal work on a shared CPU)
    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every_epochs: int = 1
    seed: int = 0


class RecipeDecode(_Section):
    beam: int = 4
    constrained: bool = True
    execution_guided: bool = True
    fallback: bool = True  # no candidate runs: answer SELECT count(*) FROM the first table
    fk_joins: bool = True  # join conditions follow a foreign key where one links the tables
    retry_beam: int = 16  # with execution guidance: decode again this wide when no candidate runs
    max_steps: int = 80
    batch_size: int = 64
    limit: int | None = None


class RecipeConfig(_Section):
    name: str = "spider_cpu"
    dir: str | None = None
    data: RecipeData = RecipeData()
    model: RecipeModel = RecipeModel()
    train: RecipeTrain = RecipeTrain()
    decode: RecipeDecode = RecipeDecode()

    @property
    def run_dir(self) -> Path:
        return Path(self.dir or f"runs/{self.name}")


def load_config(path: str, overrides: list[str] = ()) -> RecipeConfig:
    """YAML + ``section.key=value`` overrides -> a validated :class:`RecipeConfig`."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: {e}") from None
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(value)
    if isinstance(raw.get("data"), dict) and "cell_values" in raw["data"]:
        raise ConfigError(f"{path}: data.cell_values is now a parameter of the schema linker: "
                          f"data.linker: {{name: lexical, params: {{cell_values: {str(raw['data']['cell_values']).lower()}}}}}")
    try:
        cfg = RecipeConfig(**raw)
    except Exception as e:  # pydantic's message names the field
        raise ConfigError(f"{path}: {e}") from None
    from vantage_core.plugins import registry

    def check(kind: str, spec: dict) -> None:
        if "name" not in spec:
            raise PluginError(f"no 'name' (a registered {kind})")
        problems = registry().check_params(kind, spec["name"], spec.get("params", {}))
        if problems:
            raise PluginError("; ".join(problems))

    checks = [("data.linker", lambda: make_linker(cfg)),  # unknown names or parameters fail before any work
              ("model.router", lambda: check("router", cfg.model.router)),
              ("model.expert", lambda: check("expert", cfg.model.expert))]
    for field_name, run_check in checks:
        try:
            run_check()
        except PluginError as e:
            raise ConfigError(f"{path}: {field_name}: {e}") from None
    return cfg


def make_linker(cfg: RecipeConfig):
    """The ``schema_linker`` plugin ``data.linker`` names, built with its params."""
    from vantage_core.plugins import registry

    spec = cfg.data.linker
    return registry().build("schema_linker", spec.name, **spec.params)


# ------------------------------------------------------------------------------------ prepare


def _minilm():
    from vantage_plugins.schema_encoders.minilm import MiniLMSchemaEncoder

    return MiniLMSchemaEncoder(384, freeze=True, max_len=128)


def featurize(ex, tok, values, linker=None) -> dict[str, Any]:
    """One example -> question pieces, schema items, linking features and gold actions.

    ``linker``: a ``schema_linker`` plugin (default: ``lexical``); ``values``: the database's cell
    values when ``linker.uses_values``, else None.
    """
    if linker is None:
        from vantage_core.plugins import registry

        linker = registry().build("schema_linker", "lexical")
    enc = tok.encode(ex.question)
    n = sum(enc.attention_mask)
    ids, offsets, word_ids = enc.ids[:n], enc.offsets[:n], enc.word_ids[:n]
    copyable = [w is not None for w in word_ids]
    words: dict[int, tuple[int, int]] = {}
    for (s, e), w in zip(offsets, word_ids):
        if w is not None:
            words[w] = (words[w][0], e) if w in words else (s, e)
    word_list = [ex.question[s:e] for _, (s, e) in sorted(words.items())]
    items = schema_items(ex.schema)
    links = linker.link(word_list, items, values)
    order = {w: i for i, w in enumerate(sorted(words))}
    per_piece = lambda tags: [tags[order[w]] if w is not None else 0 for w in word_ids]  # noqa: E731
    try:
        actions, error = encode_sql(ex.sql, items, ex.question, offsets, copyable), None
    except SQLCodecError as e:
        actions, error = None, str(e)
    keys = [int(it.primary) + 2 * int(it.foreign) for it in items]
    types = [ITEM_TYPES.index(it.col_type) if it.col_type in ITEM_TYPES else len(ITEM_TYPES) - 1 for it in items]
    return {"q_ids": ids, "offsets": offsets, "copy": copyable, "items": items, "item_key": keys, "item_type": types,
            "item_link_name": links.item_name, "item_link_value": links.item_value,
            "q_link_table": per_piece(links.word_table), "q_link_column": per_piece(links.word_column),
            "q_link_value": per_piece(links.word_value), "actions": actions, "codec_error": error,
            "item_texts": [it.text for it in items],
            "table_texts": [items[it.table_index].text for it in items]}


def _minilm_batches(encoder, texts: list[str], batch: int, pooled: bool, desc: str):
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(texts), batch), desc=desc, file=sys.stderr):
        ids, mask = encoder.tokenize(texts[i:i + batch])
        states = encoder.bert(mx.array(ids), mx.array(mask))  # (b, S, 384)
        if pooled:
            m = mx.array(mask).astype(mx.float32)[..., None]
            v = (states * m).sum(1) / m.sum(1)
            mx.eval(v)
            out += list(np.array(v, dtype=np.float16))
        else:
            mx.eval(states)
            s = np.array(states, dtype=np.float16)
            out += [s[j, :int(mask[j].sum())] for j in range(len(ids))]
    return out


def prepare(cfg: RecipeConfig) -> Path:
    """Load Spider, featurize, run MiniLM once; cache everything under the run dir."""
    from tqdm import tqdm
    from vantage_plugins.datasets.spider import SpiderDataset

    ds = SpiderDataset(cfg.data.path, cfg.data.holdout_fraction, cfg.data.holdout_seed)
    linker = make_linker(cfg)
    encoder = _minilm()
    tok = encoder.wordpiece
    splits = {}
    for split in ("train", "validation"):
        report = ds.load(split)
        print(report.summary("spider", split), file=sys.stderr)
        feats = []
        for ex in tqdm(report.examples, desc=f"link {split}", file=sys.stderr):
            values = column_values(ex.db_paths[0], ex.schema) if linker.uses_values else None
            f = featurize(ex, tok, values, linker)
            f["example"] = ex.to_dict()
            feats.append(f)
        splits[split] = feats
    all_feats = splits["train"] + splits["validation"]
    texts = sorted({t for f in all_feats for t in f["item_texts"]})
    vecs = dict(zip(texts, _minilm_batches(encoder, texts, 128, True, "minilm names")))
    order = sorted(range(len(all_feats)), key=lambda i: len(all_feats[i]["q_ids"]))
    qs = _minilm_batches(encoder, [all_feats[i]["example"]["question"] for i in order], 64, False, "minilm questions")
    for i, s in zip(order, qs):
        assert s.shape[0] == len(all_feats[i]["q_ids"]), "MiniLM tokenization differs between passes"
        all_feats[i]["q_states"] = s
    pieces = {t: tok.encode(t, add_special_tokens=False).ids[:8] or [100] for t in texts}
    counts = Counter(v for f in splits["train"] if f["actions"] for k, v in f["actions"] if k == VOCAB)
    itos = SPECIALS + sorted(t for t, c in counts.items() if t not in SPECIALS and
                             (not t.startswith("'") and not t[:1].isdigit() or c >= cfg.data.min_literal_count))
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.run_dir / "cache.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"splits": splits, "name_vecs": vecs, "name_pieces": pieces, "itos": itos,
                     "data": cfg.data.model_dump()}, fh)
    codec = Counter(f["codec_error"] is None for f in splits["train"])
    print(f"cached {path}: vocab {len(itos)}, train codec coverage {codec[True]}/{sum(codec.values())}",
          file=sys.stderr)
    return path


def load_cache(cfg: RecipeConfig) -> dict:
    path = cfg.run_dir / "cache.pkl"
    if not path.is_file():
        raise ConfigError(f"{path} not found: run `python benchmarks/spider_recipe.py prepare --config ...` first")
    with open(path, "rb") as fh:
        cache = pickle.load(fh)
    built, wanted = cache.get("data"), cfg.data.model_dump()
    if built is not None and built != wanted:  # e.g. another schema linker: the features differ
        diff = ", ".join(f"data.{k}: {built.get(k)!r} in the cache, {wanted[k]!r} in the config"
                         for k in wanted if built.get(k) != wanted[k])
        raise ConfigError(f"{path} was prepared with other data settings ({diff}); run `prepare --force` "
                          "with this config, or give it its own `dir`")
    return cache


# ------------------------------------------------------------------------------------ batching


def collate(feats: list[dict], cache: dict, stoi: dict[str, int], with_targets: bool = True) -> dict[str, mx.array]:
    """Pad a list of featurized examples into one batch."""
    B = len(feats)
    Q = max(len(f["q_ids"]) for f in feats)
    N = max(len(f["items"]) for f in feats)
    b: dict[str, np.ndarray] = {
        "q_states": np.zeros((B, Q, 384), np.float32), "q_ids": np.zeros((B, Q), np.int32),
        "q_mask": np.zeros((B, Q), bool), "q_copy": np.zeros((B, Q), bool), "q_start": np.zeros((B, Q), bool),
        "item_vec": np.zeros((B, N, 384), np.float32), "item_table_vec": np.zeros((B, N, 384), np.float32),
        "item_pieces": np.zeros((B, N, 8), np.int32), "item_pieces_mask": np.zeros((B, N, 8), bool),
        "table_pieces": np.zeros((B, N, 8), np.int32), "table_pieces_mask": np.zeros((B, N, 8), bool),
        "item_mask": np.zeros((B, N), bool)}
    for name in ("item_type", "item_key", "item_link_name", "item_link_value"):
        b[name] = np.zeros((B, N), np.int32)
    for name in ("q_link_table", "q_link_column", "q_link_value"):
        b[name] = np.zeros((B, Q), np.int32)
    vecs, pieces = cache["name_vecs"], cache["name_pieces"]
    for i, f in enumerate(feats):
        q, n = len(f["q_ids"]), len(f["items"])
        b["q_states"][i, :q] = f["q_states"]
        b["q_ids"][i, :q] = f["q_ids"]
        b["q_mask"][i, :q] = True
        b["q_copy"][i, :q] = f["copy"]
        text = f["example"]["question"]
        b["q_start"][i, :q] = [c and (text[s:e][:1].isalnum() or text[s:e][:1] in "%-$")
                               for c, (s, e) in zip(f["copy"], f["offsets"])]
        b["item_mask"][i, :n] = True
        for j, (t, tt) in enumerate(zip(f["item_texts"], f["table_texts"])):
            b["item_vec"][i, j], b["item_table_vec"][i, j] = vecs[t], vecs[tt]
            p, tp = pieces[t], pieces[tt]
            b["item_pieces"][i, j, :len(p)], b["item_pieces_mask"][i, j, :len(p)] = p, True
            b["table_pieces"][i, j, :len(tp)], b["table_pieces_mask"][i, j, :len(tp)] = tp, True
        for name in ("item_type", "item_key", "item_link_name", "item_link_value"):
            b[name][i, :n] = f[name]
        for name in ("q_link_table", "q_link_column", "q_link_value"):
            b[name][i, :q] = f[name]
    if with_targets:
        V = len(stoi)
        seqs = [[(VOCAB, BOS)] + f["actions"] + [(VOCAB, EOS)] for f in feats]
        T = max(len(s) for s in seqs) - 1
        for name in ("in_kind", "in_value", "target"):
            b[name] = np.zeros((B, T), np.int32)
        b["target_mask"] = np.zeros((B, T), bool)
        for i, s in enumerate(seqs):
            coded = [(k, stoi.get(v, stoi[UNK_LIT]) if k == VOCAB else v) for k, v in s]
            for t, (k, v) in enumerate(coded[:-1]):
                b["in_kind"][i, t], b["in_value"][i, t] = k, v
            for t, (k, v) in enumerate(coded[1:]):
                b["target"][i, t] = v if k == VOCAB else V + v if k == ITEM else V + N + v
                b["target_mask"][i, t] = True
    return {k: mx.array(v) for k, v in b.items()}


def batches(feats: list[dict], size: int, rng: random.Random | None):
    """Length-bucketed batches (shuffled when ``rng`` is given)."""
    # Sort by schema size, then within runs of 8 batches by SQL length: little padding in either.
    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["items"]))
    span = size * 8
    order = [i for s in range(0, len(order), span)
             for i in sorted(order[s:s + span], key=lambda i: len(feats[i]["actions"] or []))]
    chunks = [order[i:i + size] for i in range(0, len(order), size)]
    if rng is not None:
        rng.shuffle(chunks)
    return [[feats[i] for i in c] for c in chunks]


def build(cfg: RecipeConfig, vocab_size: int) -> PointerSQL:
    return PointerSQL(PointerArgs(vocab_size=vocab_size, **cfg.model.model_dump()))


# ------------------------------------------------------------------------------------ train


def action_accuracy(model, feats, cache, stoi, size=64) -> tuple[float, float]:
    """Teacher-forced (loss, share of examples whose every action is the argmax) on ``feats``."""
    model.eval()
    tot_loss = tot_tok = exact = 0.0
    for chunk in batches(feats, size, None):
        b = collate(chunk, cache, stoi)
        q, it, qm, im = model.encode(b)
        scores, _ = model.decode(b["in_kind"], b["in_value"], q, it, qm, im)
        mask = b["target_mask"]
        ce = nn.losses.cross_entropy(scores, b["target"], reduction="none") * mask
        ok = mx.all((mx.argmax(scores, -1) == b["target"]) | ~mask, axis=1)
        mx.eval(ce, ok)
        tot_loss += ce.sum().item()
        tot_tok += mask.sum().item()
        exact += ok.sum().item()
    model.train()
    return tot_loss / max(tot_tok, 1), exact / max(len(feats), 1)


def train(cfg: RecipeConfig) -> Path:
    from tqdm import tqdm

    cache = load_cache(cfg)
    itos = cache["itos"]
    stoi = {t: i for i, t in enumerate(itos)}
    tr = [f for f in cache["splits"]["train"] if f["actions"] is not None]
    va = [f for f in cache["splits"]["validation"] if f["actions"] is not None]
    rng = random.Random(cfg.train.seed)
    mx.random.seed(cfg.train.seed)
    model = build(cfg, len(itos))
    n_params = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    steps_per_epoch = math.ceil(len(tr) / cfg.train.batch_size)
    t_cfg = cfg.train
    # The schedule assumes the time budget: estimate total steps after the first epoch.
    sched_total = [steps_per_epoch * 30]

    def lr_at(step):
        if step < t_cfg.warmup_steps:
            return t_cfg.lr * (step + 1) / t_cfg.warmup_steps
        frac = min(1.0, (step - t_cfg.warmup_steps) / max(1, sched_total[0] - t_cfg.warmup_steps))
        return t_cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    opt = optim.AdamW(learning_rate=t_cfg.lr, weight_decay=t_cfg.weight_decay)
    loss_and_grad = nn.value_and_grad(model, lambda m, b: pointer_loss(m, b))
    out = cfg.run_dir / f"seed{t_cfg.seed}"
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train_log.jsonl", "w")
    print(f"train {len(tr)} (of {len(cache['splits']['train'])}), held-out {len(va)}; "
          f"{n_params / 1e6:.2f}M trainable parameters", file=sys.stderr)
    start, step, best = time.time(), 0, -1.0
    budget = t_cfg.minutes * 60
    for epoch in range(t_cfg.max_epochs):
        model.train()
        ep_loss, ep_n = 0.0, 0
        for chunk in tqdm(batches(tr, t_cfg.batch_size, rng), desc=f"epoch {epoch}", file=sys.stderr, mininterval=30):
            b = collate(chunk, cache, stoi)
            opt.learning_rate = lr_at(step)
            (loss, ce, loads), grads = loss_and_grad(model, b)
            grads, _ = optim.clip_grad_norm(grads, t_cfg.grad_clip)
            opt.update(model, grads)
            model.update_routers(loads)
            mx.eval(model.parameters(), opt.state, loss)
            ep_loss += ce.item()
            ep_n += 1
            step += 1
            if time.time() - start > budget or (t_cfg.max_steps and step >= t_cfg.max_steps):
                break
        elapsed = time.time() - start
        if epoch == 0:  # how many steps fit the budget
            sched_total[0] = max(steps_per_epoch, int(budget / elapsed * steps_per_epoch))
            if t_cfg.max_steps:
                sched_total[0] = min(sched_total[0], t_cfg.max_steps)
        stop = elapsed > budget or epoch == t_cfg.max_epochs - 1 or bool(t_cfg.max_steps and step >= t_cfg.max_steps)
        row = {"epoch": epoch, "step": step, "minutes": elapsed / 60, "train_ce": ep_loss / max(ep_n, 1),
               "lr": lr_at(step)}
        if (epoch + 1) % t_cfg.eval_every_epochs == 0 or stop:
            v_loss, v_acc = action_accuracy(model, va, cache, stoi)
            row.update(heldout_ce=v_loss, heldout_action_exact=v_acc)
            if v_acc >= best:
                best = v_acc
                model.save_weights(str(out / "best.safetensors"))
        model.save_weights(str(out / "last.safetensors"))
        log.write(json.dumps(row) + "\n")
        log.flush()
        print(json.dumps(row), file=sys.stderr)
        if stop:
            break
    (out / "meta.json").write_text(json.dumps({"config": cfg.model_dump(), "steps": step, "params": n_params,
                                               "minutes": (time.time() - start) / 60, "best_heldout_action_exact": best}))
    return out


# ------------------------------------------------------------------------------------ evaluate


def choose(cands: list[tuple[str, float]], db_path: str, execution_guided: bool) -> tuple[str | None, str]:
    """Best candidate; with execution guidance the first that runs with rows, else the first that runs."""
    from vantage_core.evaluate.executor import execute

    if not cands:
        return None, "none"
    if not execution_guided:
        return cands[0][0], "top"
    runs = None
    for sql, _ in cands:
        res = execute(db_path, sql, timeout_s=2.0, max_rows=1000)
        if res.ok and res.rows:
            return sql, "rows"
        if res.ok and runs is None:
            runs = sql
    return (runs, "empty") if runs is not None else (None, "none")


def evaluate(cfg: RecipeConfig, checkpoint: str | None = None, out_name: str | None = None) -> dict:
    from tqdm import tqdm
    from vantage_core.data.example import Example
    from vantage_core.evaluate.runner import evaluate_predictions as run_eval

    cache = load_cache(cfg)
    itos = cache["itos"]
    model = build(cfg, len(itos))
    ckpt = Path(checkpoint) if checkpoint else cfg.run_dir / f"seed{cfg.train.seed}" / "best.safetensors"
    model.load_weights(str(ckpt))
    model.eval()
    d = cfg.decode
    feats = cache["splits"]["validation"][:d.limit] if d.limit else cache["splits"]["validation"]
    preds, how = [None] * len(feats), Counter()
    stoi = {t: i for i, t in enumerate(itos)}

    def candidates(idx: list[int], beam: int) -> list[list[tuple[str, float]]]:
        chunk = [feats[i] for i in idx]
        b = collate(chunk, cache, stoi, with_targets=False)
        beams = beam_search(model, b, itos, beam=beam, max_steps=d.max_steps, constrained=d.constrained,
                            items=[f["items"] for f in chunk],
                            fks=[fk_partners(f["items"], f["example"]["schema"]["foreign_keys"]) for f in chunk]
                            if d.fk_joins else None)
        return [[(render_sql([(k, itos[v] if k == VOCAB else v) for k, v in acts], f["items"],
                              f["example"]["question"], f["offsets"], cased_values(f["example"]["db_paths"][0])), sc)
                 for acts, sc in hyps] for f, hyps in zip(chunk, beams)]

    def decode(order: list[int], beam: int, desc: str) -> list[int]:
        """Decode ``order``; return the examples for which no candidate was chosen."""
        missed = []
        for s in tqdm(range(0, len(order), d.batch_size), desc=desc, file=sys.stderr):
            idx = order[s:s + d.batch_size]
            for i, cands in zip(idx, candidates(idx, beam)):
                sql, why = choose(cands, feats[i]["example"]["db_paths"][0], d.execution_guided)
                if sql is None:
                    missed.append(i)
                    preds[i] = cands[0][0] if cands else None
                else:
                    preds[i] = sql
                    how[why] += 1
        return missed

    order = sorted(range(len(feats)), key=lambda i: len(feats[i]["items"]))
    t0 = time.time()
    missed = decode(order, d.beam, "decode")
    if missed and d.retry_beam > d.beam:  # nothing ran: search wider before giving up
        retried = set(missed)
        missed = decode(missed, d.retry_beam, f"retry beam {d.retry_beam}")
        how["retried"] = len(retried)
    for i in missed:
        if d.fallback:
            preds[i] = f"SELECT count(*) FROM {feats[i]['items'][0].table}"
            how["fallback"] += 1
        else:
            how["none"] += 1
            preds[i] = preds[i] or "SELECT"
    decode_s = time.time() - t0
    examples = [Example.from_dict(f["example"]) for f in feats]
    out = cfg.run_dir / (out_name or f"eval_seed{cfg.train.seed}")
    res = run_eval(examples, preds, ["execution", "exact_match", "valid_sql"], out_dir=out, split="validation",
                   title=f"Spider held-out databases ({len(examples)} questions)")
    summary = res["summary"]
    summary["_choice"] = dict(how)
    summary["_decode_seconds"] = decode_s
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps({k: (v.get("overall", v) if isinstance(v, dict) else v) for k, v in summary.items()},
                     default=str, indent=1))
    return summary


def sweep(sweep_file: str, only: list[str] | None = None, decode_only: bool = False) -> Path:
    """Train and evaluate each variant of a sweep file (``decode_only``: evaluate the variants'
    trained checkpoints again, e.g. after a decoding change); each variant's ``row.json``."""
    spec = yaml.safe_load(Path(sweep_file).read_text())
    for key in ("base", "variants"):
        if key not in spec:
            raise ConfigError(f"{sweep_file}: missing {key!r} (base config path; variants: name -> overrides)")
    base = load_config(spec["base"])
    rows = []
    for name, overrides in spec["variants"].items():
        if only and name not in only:
            continue
        sets = [f"train.minutes={spec.get('minutes', base.train.minutes)}",
                f"train.max_steps={spec.get('steps')}",
                f"dir={base.run_dir / 'ablations' / name}"] + list(spec.get("decode", [])) + list(overrides)
        cfg = load_config(spec["base"], sets)
        cfg.run_dir.mkdir(parents=True, exist_ok=True)
        (cfg.run_dir / "cache.pkl").unlink(missing_ok=True)
        if cfg.data == base.data:  # same features: share the base run's cache
            (cfg.run_dir / "cache.pkl").symlink_to((base.run_dir / "cache.pkl").resolve())
        else:  # e.g. another schema linker
            prepare(cfg)
        print(f"== {name}: {overrides}", file=sys.stderr)
        out = cfg.run_dir / f"seed{cfg.train.seed}"
        if not (decode_only and (out / "best.safetensors").is_file()):
            out = train(cfg)
        summary = evaluate(cfg)
        meta = json.loads((out / "meta.json").read_text())
        rows.append((name, overrides, meta, summary))
        (cfg.run_dir / "row.json").write_text(json.dumps({"name": name, "overrides": overrides, "meta": meta,
                                                           "summary": summary}, default=str))
    return base.run_dir


PUBLISHED = [("SyntaxSQLNet + augmentation (test, EM)", 27.2), ("IRNet + GloVe (test, EM)", 46.7),
             ("RAT-SQL + GloVe (dev, EM)", 62.7)]
HARDNESS = ("easy", "medium", "hard", "extra")


def _scores(summary: dict) -> dict[str, float]:
    ex, em = summary["execution"], summary["exact_match"]
    row = {"EX": 100 * ex["execution"], "EM": 100 * em["exact_match"],
           "runs": 100 * summary.get("valid_sql", {}).get("valid_sql", float("nan"))}
    for h in HARDNESS:
        row[f"EX {h}"] = 100 * ex["by_hardness"].get(h, {}).get("execution", float("nan"))
        row[f"EM {h}"] = 100 * em["by_hardness"].get(h, {}).get("exact_match", float("nan"))
    return row


def _row(name: str, r: dict[str, float], extra: str = "") -> str:
    return (f"| {name} |{extra} {r['EX']:.1f} | {r['EM']:.1f} | {r['runs']:.1f} | "
            + " | ".join(f"{r[f'EX {h}']:.1f}" for h in HARDNESS) + " |")


def error_breakdown(results: Path) -> dict[str, int]:
    """Why the wrong answers of an evaluation (``results.jsonl``) are wrong, by the shape of the
    gold and predicted queries (a question can fall under several): joins left out, another
    number of SELECT items, GROUP BY differs, a gold string value the question does not spell."""
    import sqlglot
    from sqlglot import exp

    def shape(sql: str):
        try:
            tree = sqlglot.parse_one(sql, read="sqlite")
        except sqlglot.errors.ParseError:
            return None
        selects = list(tree.find_all(exp.Select))
        return {"joins": sum(1 for _ in tree.find_all(exp.Join)), "items": len(selects[0].expressions) if selects else 0,
                "group": sorted(g.alias_or_name.lower() for sel in selects if sel.args.get("group")  # names, not aliases
                                for g in sel.args["group"].expressions),
                "strings": [lit.this for lit in tree.find_all(exp.Literal) if lit.is_string]}

    out = Counter()
    for line in results.read_text().splitlines():
        r = json.loads(line)
        if r["scores"]["execution"]["exec"]:
            continue
        out["wrong"] += 1
        gold, pred = shape(r["gold"]), shape(r["prediction"])
        if gold is None or pred is None:
            out["unparsed"] += 1
            continue
        out["gold joins, prediction does not"] += gold["joins"] > 0 and pred["joins"] == 0
        out["other number of SELECT items"] += gold["items"] != pred["items"]
        out["fewer SELECT items"] += gold["items"] > pred["items"]
        out["GROUP BY differs"] += gold["group"] != pred["group"]
        out["gold string value not in the question"] += any(
            not re.search(rf"(?<!\w){re.escape(v.strip('%'))}(?!\w)", r["question"], re.IGNORECASE)
            for v in gold["strings"])
    return dict(out)


def report(cfg: RecipeConfig, figures: str = "docs/results/spider_cpu") -> str:
    """Tables (Markdown, printed) and figures (PNG): every trained seed (``seed<N>/`` scored in
    ``eval_seed<N>/``) with mean and spread, the decoding variants of one checkpoint (the other
    ``eval_*`` folders) and the ablation sweep (``ablations/*/row.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig_dir = Path(figures)
    fig_dir.mkdir(parents=True, exist_ok=True)
    lines, head = [], "| EX | EM | runs | " + " | ".join(f"EX {h}" for h in HARDNESS) + " |"
    seeds = {}
    for meta in sorted(cfg.run_dir.glob("seed*/meta.json")):
        summary = meta.parent.parent / f"eval_{meta.parent.name}" / "summary.json"
        if summary.is_file():
            seeds[meta.parent.name] = (json.loads(meta.read_text()), json.loads(summary.read_text()))
    if seeds:
        lines += [f"| run | minutes | steps {head} answered by the fallback |",
                  "|---|---|---|---|---|---|" + "---|" * (len(HARDNESS) + 1)]
        scores = {}
        for name, (meta, summary) in seeds.items():
            scores[name] = _scores(summary)
            fallback = summary.get("_choice", {}).get("fallback", 0)
            lines.append(_row(name, scores[name], f" {meta['minutes']:.1f} | {meta['steps']} |") + f" {fallback} |")
        keys = list(next(iter(scores.values())))
        mean = {k: float(np.mean([r[k] for r in scores.values()])) for k in keys}
        std = {k: float(np.std([r[k] for r in scores.values()], ddof=1)) if len(scores) > 1 else 0.0 for k in keys}
        lines.append(f"| **mean +- std ({len(scores)} seeds)** | | | **{mean['EX']:.1f} +- {std['EX']:.1f}** | "
                     f"{mean['EM']:.1f} +- {std['EM']:.1f} | {mean['runs']:.1f} | "
                     + " | ".join(f"{mean[f'EX {h}']:.1f} +- {std[f'EX {h}']:.1f}" for h in HARDNESS) + " | |")
        fig, ax = plt.subplots(figsize=(7, 3.6))
        x = np.arange(len(HARDNESS) + 1)
        cols = ["EX"] + [f"EX {h}" for h in HARDNESS], ["EM"] + [f"EM {h}" for h in HARDNESS]
        for off, label, ks in ((-0.2, "execution accuracy", cols[0]), (0.2, "exact match", cols[1])):
            ax.bar(x + off, [mean[k] for k in ks], 0.4, yerr=[std[k] for k in ks], capsize=3, label=label)
        for pub, v in PUBLISHED:
            ax.axhline(v, ls="--", lw=0.8, color="grey")
            ax.text(len(HARDNESS) + 0.45, v, pub, fontsize=6, va="bottom", ha="right", color="grey")
        ax.set_xticks(x, ["all"] + list(HARDNESS))
        ax.set_ylabel("% of held-out questions")
        ax.set_title(f"Spider, 21 held-out databases, mean +- std of {len(scores)} seeds "
                     "(published: EM on Spider dev/test)", fontsize=8)
        ax.legend(fontsize=8, loc="upper right")
        fig.tight_layout()
        fig.savefig(fig_dir / "by_hardness.png", dpi=120)
        plt.close(fig)
    main_results = cfg.run_dir / f"eval_seed{cfg.train.seed}" / "results.jsonl"
    if main_results.is_file():
        errors = error_breakdown(main_results)
        lines += ["", f"| wrong answers of eval_seed{cfg.train.seed} ({errors.get('wrong', 0)}) | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in errors.items() if k != "wrong"]
    variants = {p.parent.name: _scores(json.loads(p.read_text())) for p in sorted(cfg.run_dir.glob("eval_*/summary.json"))
                if not p.parent.name.startswith("eval_seed")}
    if variants:
        lines += ["", f"| decoding (seed-{cfg.train.seed} checkpoint) {head}", "|---|---|---|---|" + "---|" * len(HARDNESS)]
        lines += [_row(name, r) for name, r in variants.items()]
    logs = {m.parent.name: [json.loads(x) for x in (m.parent / "train_log.jsonl").read_text().splitlines()]
            for m in sorted(cfg.run_dir.glob("seed*/meta.json")) if (m.parent / "train_log.jsonl").is_file()}
    if logs:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
        for name, rows in logs.items():
            t = [r["minutes"] for r in rows]
            line, = ax.plot(t, [r["train_ce"] for r in rows], label=f"{name} train")
            ax.plot(t, [r.get("heldout_ce") for r in rows], "--", color=line.get_color(), label=f"{name} held-out")
            ax2.plot(t, [100 * r.get("heldout_action_exact", 0) for r in rows], color=line.get_color(), label=name)
        ax.set_xlabel("training minutes (2 CPU cores)")
        ax.set_ylabel("cross-entropy per action")
        ax.legend(fontsize=6, ncol=2)
        ax2.set_xlabel("training minutes (2 CPU cores)")
        ax2.set_ylabel("held-out exact sequences, %")
        ax2.set_title("teacher-forced exact action sequences", fontsize=8)
        ax2.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(fig_dir / "training.png", dpi=120)
        plt.close(fig)
    abl = [json.loads(p.read_text()) for p in sorted((cfg.run_dir / "ablations").glob("*/row.json"))]
    if abl:
        lines += ["", "| variant (equal budget) | overrides | params | epochs-steps | EX | EM | "
                  + " | ".join(f"EX {h}" for h in HARDNESS) + " |", "|---|---|---|---|---|---|" + "---|" * len(HARDNESS)]
        names, exs = [], []
        for a in abl:
            r = _scores(a["summary"])
            names.append(a["name"])
            exs.append(r["EX"])
            lines.append(f"| {a['name']} | {' '.join(a['overrides']) or '-'} | {a['meta']['params'] / 1e6:.2f}M | "
                         f"{a['meta']['steps']} | {r['EX']:.1f} | {r['EM']:.1f} | "
                         + " | ".join(f"{r[f'EX {h}']:.1f}" for h in HARDNESS) + " |")
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.barh(names[::-1], exs[::-1])
        ax.set_xlabel("execution accuracy, % (held-out databases)")
        ax.set_title("Ablations at an equal short training budget", fontsize=9)
        fig.tight_layout()
        fig.savefig(fig_dir / "ablations.png", dpi=120)
        plt.close(fig)
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["prepare", "train", "evaluate", "all", "sweep", "report"])
    p.add_argument("--sweep", default="configs/spider_ablations/sweep.yaml")
    p.add_argument("--only", action="append", help="sweep: run only these variants")
    p.add_argument("--decode-only", action="store_true", help="sweep: re-evaluate trained variants, train the rest")
    p.add_argument("--config", default="configs/spider_cpu.yaml")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--checkpoint")
    p.add_argument("--out")
    p.add_argument("--force", action="store_true", help="prepare: rebuild the cache even if it exists")
    args = p.parse_args(argv)
    if args.command == "sweep":
        sweep(args.sweep, args.only, args.decode_only)
        return
    cfg = load_config(args.config, args.overrides)
    if args.command == "report":
        report(cfg)
        return
    if args.command in ("prepare", "all"):
        if args.force or not (cfg.run_dir / "cache.pkl").is_file():
            prepare(cfg)
        else:
            print(f"{cfg.run_dir / 'cache.pkl'} exists; --force to rebuild it", file=sys.stderr)
    if args.command in ("train", "all"):
        train(cfg)
    if args.command in ("evaluate", "all"):
        evaluate(cfg, args.checkpoint, args.out)


if __name__ == "__main__":
    main()
