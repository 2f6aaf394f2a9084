"""Knowledge distillation (``train.distill``): what trained teachers predict on the training split.

Before training, each teacher reads every training example teacher-forced, in eval mode; per
example and target position the student then also learns the teachers' mean distribution over the
unified output space (the mean of ``softmax(logits / T)``), kept as its ``top_k`` entries
renormalized (Hinton et al. 2015). The unified space's layout depends on a batch's padding
(vocabulary ids, then the batch's padded items, then its question pieces), so entries are stored
as (kind, index) of the example (:data:`VOCAB`, :data:`ITEM`, :data:`QUESTION`) and turned back into
ids of whatever batch the example lands in. The targets are cached in the data cache, keyed by the
teachers' checkpoint contents, the training data, ``temperature`` and ``top_k``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import vantage_core  # noqa: F401  (the optimized BLAS before mlx)
import mlx.core as mx

from vantage_core.config import Config
from vantage_core.data.sql_actions import ITEM, QUESTION, VOCAB
from vantage_core.errors import ConfigError, VantageError

TARGETS_VERSION = 1  # bump when the stored targets change, so caches are rebuilt
TEACHER_FIELDS = ("teacher_ids", "teacher_probs")  # what a training batch carries for the loss
RECORD = "distill.json"  # in the run folder: which teacher targets the run trains on
CHUNK = 64  # examples per teacher batch


@dataclass
class TeacherTargets:
    """Per training example ``r``, per masked-in target position (in order), the teachers' top-k
    entries: rows ``offsets[r]:offsets[r + 1]`` of ``kinds`` (P, K) int8, ``index`` (P, K) int32
    (a vocabulary id, an item or a question piece of the example) and ``probs`` (P, K) float32
    (summing to 1 per row)."""

    offsets: np.ndarray
    kinds: np.ndarray
    index: np.ndarray
    probs: np.ndarray
    key: str = ""

    def batch_arrays(self, batch: dict, vocab_size: int) -> dict[str, np.ndarray]:
        """``teacher_ids`` (B, T, K) int32 in the unified space of ``batch`` (its padding) and
        ``teacher_probs`` (B, T, K) float32, zero where ``loss_mask`` is 0."""
        mask, rows = batch["loss_mask"], batch["rows"]
        n_items = batch["item_mask"].shape[1] if "item_mask" in batch else 0
        ids = np.zeros(mask.shape + (self.kinds.shape[1],), np.int32)
        probs = np.zeros(ids.shape, np.float32)
        for b, r in enumerate(rows):
            positions = np.flatnonzero(mask[b] > 0)
            start, end = self.offsets[r], self.offsets[r + 1]
            if end - start != len(positions):
                raise VantageError(f"training example {r} ({batch['example_ids'][b]}) has {len(positions)} target "
                                   f"positions, its teacher targets {end - start}: the cached targets ({self.key}) "
                                   f"belong to other data")
            ids[b, positions] = unified(self.kinds[start:end], self.index[start:end], vocab_size, n_items)
            probs[b, positions] = self.probs[start:end]
        return {"teacher_ids": ids, "teacher_probs": probs}

    def attach(self, collate: Callable[..., dict], vocab_size: int) -> Callable[..., dict]:
        """``collate`` whose batches also carry :data:`TEACHER_FIELDS`."""
        def with_targets(rows, index=0):
            batch = collate(rows, index)
            return {**batch, **self.batch_arrays(batch, vocab_size)}

        return with_targets


def unified(kinds: np.ndarray, index: np.ndarray, vocab_size: int, n_items: int) -> np.ndarray:
    """(kind, index) of an example -> ids of a batch whose items are padded to ``n_items``."""
    return np.where(kinds == VOCAB, index, np.where(kinds == ITEM, vocab_size + index, vocab_size + n_items + index))


def example_relative(ids: np.ndarray, vocab_size: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`unified`: (kinds int8, index int32) of ids of a batch padded to ``n_items``."""
    kinds = np.where(ids < vocab_size, VOCAB, np.where(ids < vocab_size + n_items, ITEM, QUESTION)).astype(np.int8)
    offset = np.where(kinds == VOCAB, 0, np.where(kinds == ITEM, vocab_size, vocab_size + n_items))
    return kinds, (ids - offset).astype(np.int32)


# ---------------------------------------------------------------------------- the teachers

def teacher_folders(cfg: Config) -> list[Path]:
    """The model folder of each of ``train.distill.teachers`` (a run's best, else last checkpoint);
    a missing one is one error line."""
    from vantage_core.model.io import resolve_model_dir

    folders = []
    for path in cfg.train.distill.teachers:
        try:
            folders.append(resolve_model_dir(path))
        except VantageError as exc:
            raise ConfigError(f"train.distill.teachers: {exc}") from None
    return folders


def check_teacher(path: Any, teacher_cfg: Config, teacher_vocab: Any, cfg: Config, vocab: Any) -> None:
    """Refuse a teacher that reads batches otherwise or scores another output space than the student."""
    from vantage_core.inference.ensemble import request_side, vocabulary

    theirs, ours = request_side(teacher_cfg), request_side(cfg)
    for key in ours:
        if theirs[key] != ours[key]:
            raise ConfigError(f"train.distill.teachers: {path}: its {key} is {theirs[key]!r}, the student's is "
                              f"{ours[key]!r}; a teacher must read the student's batches and score its outputs")
    theirs, ours = vocabulary(teacher_vocab), vocabulary(vocab)
    if theirs != ours:
        at = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise ConfigError(f"train.distill.teachers: {path}: its output vocabulary differs from the student's "
                          f"({len(theirs)} against {len(ours)} entries, first at id {at}); train the teacher on "
                          f"the same data and tokenizer")


def load_teachers(cfg: Config, folders: Sequence[Path], vocab: Any) -> list[Any]:
    """The teachers' models in eval mode, each checked against the student."""
    from vantage_core.model.io import load_model

    models = []
    for path, folder in zip(cfg.train.distill.teachers, folders):
        model, teacher_vocab, teacher_cfg, _ = load_model(folder)
        check_teacher(path, teacher_cfg, teacher_vocab, cfg, vocab)
        model.eval()
        models.append(model)
    return models


def mean_distribution(teachers: Sequence[Any], batch: dict, temperature: float) -> mx.array:
    """(B, T, U) the teachers' mean of ``softmax(logits / temperature)`` on a host-side batch,
    teacher-forced (the padding skipped, as in training)."""
    from vantage_core.model.packing import Packing

    tokens, total = mx.array(batch["tokens"]), None
    for model in teachers:
        memory = model.encode_schema(model.schema_inputs(batch))
        packing = Packing.from_mask(batch["padding_mask"])
        h, _ = model.hidden(tokens, memory, packing=packing)
        p = mx.softmax(model.logits(h, memory, packing).astype(mx.float32) / temperature, axis=-1)
        total = p if total is None else total + p
    return total / len(teachers)


def top_entries(dist: np.ndarray, batch: dict, b: int, top_k: int, vocab_size: int) -> tuple:
    """Row ``b`` of a batch: its masked-in positions' ``top_k`` entries of ``dist`` (B, T, U),
    example-relative and renormalized (kinds, index, probs), entries on padding dropped."""
    positions = np.flatnonzero(batch["loss_mask"][b] > 0)
    p = dist[b, positions]  # (L, U)
    k = min(top_k, p.shape[-1])
    ids = np.argsort(-p, axis=-1, kind="stable")[:, :k]
    probs = np.take_along_axis(p, ids, axis=-1)
    n_items = batch["item_mask"].shape[1] if "item_mask" in batch else 0
    kinds, index = example_relative(ids, vocab_size, n_items)
    real = np.ones_like(probs, bool)
    if "item_mask" in batch:  # items and pieces of this example only (padding scores -1e9: probability 0)
        real = np.where(kinds == ITEM, index < batch["item_mask"][b].sum(),
                        np.where(kinds == QUESTION, index < batch["q_mask"][b].sum(), True))
    probs = np.where(real, probs, 0.0)
    kinds, index = np.where(real, kinds, VOCAB).astype(np.int8), np.where(real, index, 0).astype(np.int32)
    probs = (probs / probs.sum(-1, keepdims=True)).astype(np.float32)
    pad = ((0, 0), (0, top_k - k))
    return np.pad(kinds, pad), np.pad(index, pad), np.pad(probs, pad)


def compute_targets(teachers: Sequence[Any], split: Any, batch_of: Callable[[np.ndarray], dict], vocab_size: int,
                    spec: Any, progress: bool = True) -> TeacherTargets:
    """The teachers' targets for every example of ``split`` (``batch_of(rows)``: the plain,
    training-free batch of those rows), with a progress bar."""
    from tqdm.auto import tqdm

    order = np.argsort(np.asarray(split.lengths), kind="stable")  # similar lengths together: little padding
    parts: dict[int, tuple] = {}
    with tqdm(total=len(order), desc="teacher targets", unit="ex", disable=not progress, dynamic_ncols=True) as bar:
        for s in range(0, len(order), CHUNK):
            rows = order[s:s + CHUNK]
            batch = batch_of(rows)
            dist = mean_distribution(teachers, batch, spec.temperature)
            mx.eval(dist)
            dist = np.array(dist)
            for b, r in enumerate(rows):
                parts[int(r)] = top_entries(dist, batch, b, spec.top_k, vocab_size)
            bar.update(len(rows))
    ordered = [parts[r] for r in range(len(order))]
    lengths = [len(k) for k, _, _ in ordered]
    return TeacherTargets(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                          *(np.concatenate([part[i] for part in ordered]) for i in range(3)))


# ---------------------------------------------------------------------------- cache and run record

def file_digest(h: Any, folder: Path) -> None:
    """Feed every file under ``folder`` (names and bytes, in a fixed order) to the hash ``h``."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(folder)}\x00".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)


def split_fingerprint(split: Any) -> str:
    """What identifies a prepared training split: its format, its content key and its examples."""
    h = hashlib.sha1(json.dumps([split.target, split.key, len(split)]).encode())
    h.update("\x00".join(e.id for e in split.examples).encode())
    return h.hexdigest()


def targets_key(folders: Sequence[Path], split: Any, spec: Any) -> str:
    """The cache key of the teacher targets: the teachers' files, the data, temperature and top_k."""
    h = hashlib.sha1(json.dumps([TARGETS_VERSION, spec.temperature, spec.top_k, split_fingerprint(split)]).encode())
    for folder in folders:
        file_digest(h, folder)
    return h.hexdigest()[:20]


def read_targets(path: Path, key: str) -> TeacherTargets | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        return TeacherTargets(z["offsets"], z["kinds"], z["index"], z["probs"], key)


def write_targets(path: Path, targets: TeacherTargets) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(tmp, offsets=targets.offsets, kinds=targets.kinds, index=targets.index, probs=targets.probs)
    os.replace(tmp, path)


def check_record(run_folder: Path, resume: bool, key: str, folders: Sequence[Path]) -> None:
    """A new run records which targets it trains on; a resumed one must find the same."""
    record = run_folder / RECORD
    if resume and record.is_file():
        old = json.loads(record.read_text())
        if old.get("key") != key:
            raise ConfigError(f"train.distill.teachers: the teachers or the training data changed since this run "
                              f"started (targets {old.get('key')} then, {key} now: {', '.join(map(str, folders))}); "
                              f"--resume needs the same teachers")
        return
    tmp = record.with_name(f".{RECORD}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "teachers": [str(f) for f in folders]}, indent=2))
    os.replace(tmp, record)


def teacher_targets(cfg: Config, data: Any, run_folder: Path, resume: bool = False,
                    progress: bool = True) -> TeacherTargets | None:
    """The teachers' targets for the training split of ``data`` (a ``TrainingData``): read from the
    data cache, or computed and cached; None when ``train.distill`` names no teacher."""
    from vantage_core.data.pipeline import default_cache_dir

    spec = cfg.train.distill
    if not spec.teachers:
        return None
    folders = teacher_folders(cfg)
    teachers = load_teachers(cfg, folders, data.tokenizer)  # checked even when the targets are cached
    key = targets_key(folders, data.train, spec)
    path = default_cache_dir(cfg.data) / "distill" / f"train-{key}.npz"
    targets = read_targets(path, key)
    if targets is None:
        targets = compute_targets(teachers, data.train, lambda rows: plain_batch(data, rows),
                                  data.tokenizer.vocab_size, spec, progress)
        targets.key = key
        write_targets(path, targets)
    check_record(run_folder, resume, key, folders)
    return targets


def plain_batch(data: Any, rows: np.ndarray) -> dict:
    """The batch of training rows ``rows`` as evaluation would see it (no link dropout)."""
    return data.target.batch(data.train, rows, data.tokenizer)
