"""Knowledge distillation (``train.distill``): the teachers' targets on the training split, the mixed
loss, resume, and the errors for teachers that do not fit the student."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vantage_core  # noqa: F401
import mlx.core as mx

from infer_fixture import make_model_dir, make_pointer_model_dir
from test_train_run import interrupt_after
from vantage_core.config import load_config
from vantage_core.data.sql_actions import QUESTION
from vantage_core.errors import ConfigError
from vantage_core.train import distill
from vantage_core.train.telemetry import read_metrics

POINTER = Path(__file__).parent / "fixtures" / "train_tiny_pointer.yaml"
QUIET = {"progress": False, "echo": lambda *_: None}
PLAIN = ["train.eval_every=0", "train.save_every=0", "data.validation=[]"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One data cache for the module (the synthetic databases and features are made once)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VANTAGE_CACHE", str(tmp_path_factory.mktemp("distill_cache")))
        yield


def student(run_dir, *sets):
    return load_config(POINTER, [f"run.dir={run_dir}", *PLAIN, *sets])


@pytest.fixture(scope="module")
def teachers(cache, tmp_path_factory):
    """Two pointer models trained on the student's data (seeds 0 and 1): their run folders."""
    from vantage_core.train.run import train

    root = tmp_path_factory.mktemp("teachers")
    for seed in (0, 1):
        train(student(root / f"t{seed}", f"run.seed={seed}", "train.steps=12"), **QUIET)
    return [root / "t0", root / "t1"]


def with_teachers(teachers, weight=0.5, temperature=1.0, top_k=16):
    return [f"train.distill.teachers=[{teachers[0]}, {teachers[1]}]", f"train.distill.weight={weight}",
            f"train.distill.temperature={temperature}", f"train.distill.top_k={top_k}"]


def losses(run_dir, key="loss"):
    return [r[key] for r in read_metrics(run_dir) if r["kind"] == "train"]


def test_the_section_is_off_by_default_and_checks_its_values():
    """No teachers by default; a list of teachers (or one as text) by --set; out-of-range values
    name the field."""
    assert load_config(POINTER, registry=False).train.distill.teachers == []
    cfg = load_config(POINTER, ["train.distill.teachers=[runs/a, runs/b]", "train.distill.top_k=4"], registry=False)
    assert cfg.train.distill.teachers == ["runs/a", "runs/b"] and cfg.train.distill.top_k == 4
    assert load_config(POINTER, ["train.distill.teachers=runs/a"], registry=False).train.distill.teachers == ["runs/a"]
    for bad, field in (("weight=1.5", "weight"), ("temperature=0", "temperature"), ("top_k=0", "top_k"),
                       ("teachers=['']", "teachers")):
        with pytest.raises(ConfigError, match=re.escape(f"--set train.distill.{bad}: train.distill.{field}: ")):
            load_config(POINTER, [f"train.distill.{bad}"], registry=False)


@pytest.fixture(scope="module")
def targets(teachers, tmp_path_factory):
    """The student's training data and the teachers' targets at temperature 2 (top 16)."""
    from vantage_core.plugins import registry
    from vantage_core.train.distributed import init_world
    from vantage_core.train.run import training_data

    root = tmp_path_factory.mktemp("targets")
    cfg = student(root / "run", *with_teachers(teachers, temperature=2.0))
    data = training_data(cfg, registry(), init_world(), root / "tokenizer", lambda *_: None, progress=False)
    (root / "run").mkdir()
    return cfg, data, distill.teacher_targets(cfg, data, root / "run", progress=False)


def direct_distribution(teachers, batch, temperature):
    """(B, T, U) the teachers' mean softmax(logits / T), each teacher called on the padded batch."""
    total = 0
    for folder in teachers:
        model = load_teacher(folder)
        logits, _ = model(mx.array(batch["tokens"]), model.encode_schema(model.schema_inputs(batch)))
        total = total + np.array(mx.softmax(logits / temperature, axis=-1))
    return total / len(teachers)


def assert_teacher_entries(arrays, batch, direct):
    """Each masked-in position's stored entries are the most likely ids of ``direct`` (B, T, U),
    with its probabilities renormalized over them; nothing is stored on the padding."""
    for b in range(len(batch["rows"])):
        for t in np.flatnonzero(batch["loss_mask"][b]):
            kept = arrays["teacher_probs"][b, t] > 0
            ids, probs, p = arrays["teacher_ids"][b, t][kept], arrays["teacher_probs"][b, t][kept], direct[b, t]
            others = np.delete(p, ids)
            assert others.size == 0 or p[ids].min() >= others.max() - 1e-6
            assert np.allclose(probs, p[ids] / p[ids].sum(), atol=1e-5)
    assert (arrays["teacher_probs"][batch["loss_mask"] == 0] == 0).all()


@pytest.mark.parametrize("rows", [[0], [5, 0, 17]], ids=["alone", "with_others"])
def test_teacher_targets_match_a_direct_teacher_forward(teachers, targets, rows):
    """The targets of the training split, in a batch of one example and of three: the 16 most
    likely ids of both teachers called directly on that batch, with their renormalized mean
    probabilities at temperature 2."""
    from vantage_core.data.actions import collate_rows

    cfg, data, tt = targets
    batch = collate_rows(data.train, np.array(rows), data.tokenizer)
    arrays = tt.batch_arrays(batch, data.tokenizer.vocab_size)
    assert arrays["teacher_ids"].shape == batch["targets"].shape + (16,)
    assert_teacher_entries(arrays, batch, direct_distribution(teachers, batch, 2.0))


def with_schema_twice(f: dict) -> dict:
    """An example's features with every schema item listed a second time (24 items instead of 12)."""
    n = len(f["item_texts"])
    out = {k: v + v for k, v in f.items() if k in ("item_key", "item_type", "item_link_name", "item_link_value",
                                                   "item_texts", "table_texts")}
    return {**f, **out, "item_table": f["item_table"] + [t + n for t in f["item_table"]]}


def test_targets_survive_another_item_padding(teachers, targets):
    """An example whose teachers' pass padded its items to 24 (beside a schema twice as large),
    batched alone later (12 items): its question pieces sit at other ids, and every stored entry,
    the pieces included, is still where a direct teacher forward on the new batch puts it."""
    from vantage_core.data.actions import ActionSplit, collate_rows

    cfg, data, _ = targets
    i = next(i for i, f in enumerate(data.train.feats) if any(k == QUESTION for k, _ in f["actions"]))
    ex = data.train.examples[i]
    split = ActionSplit.of_features("train", [ex, ex], [data.train.feats[i], with_schema_twice(data.train.feats[i])])
    spec = cfg.train.distill.model_copy(update={"top_k": 128})  # every entry: pieces included
    tt = distill.compute_targets([load_teacher(t) for t in teachers], split,
                                 lambda rows: collate_rows(split, rows, data.tokenizer), data.tokenizer.vocab_size,
                                 spec, progress=False)
    piece_mass = tt.probs[tt.offsets[0]:tt.offsets[1]][tt.kinds[tt.offsets[0]:tt.offsets[1]] == QUESTION].sum()
    assert piece_mass > 0.01
    for rows in ([0], [1], [1, 0]):
        batch = collate_rows(split, np.array(rows), data.tokenizer)
        assert_teacher_entries(tt.batch_arrays(batch, data.tokenizer.vocab_size), batch,
                               direct_distribution(teachers, batch, 2.0))


def load_teacher(folder):
    from vantage_core.model.io import load_model

    return load_model(folder)[0]


def test_the_mapping_between_paddings_is_exact():
    """(kind, index) -> ids of a batch padded to N items -> (kind, index) gives the entries back,
    for any padding."""
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 3, (50, 8)).astype(np.int8)
    index = np.where(kinds == 0, rng.integers(0, 30, kinds.shape), rng.integers(0, 7, kinds.shape)).astype(np.int32)
    for n_items in (7, 9, 40):
        ids = distill.unified(kinds, index, 30, n_items)
        back = distill.example_relative(ids, 30, n_items)
        assert (back[0] == kinds).all() and (back[1] == index).all()
    assert not (distill.unified(kinds, index, 30, 7) == distill.unified(kinds, index, 30, 9)).all()


@pytest.fixture(scope="module")
def students(teachers, tmp_path_factory):
    """Three students of 12 steps: without teachers, with distill weight 0 and with weight 1."""
    from vantage_core.train.run import train

    root = tmp_path_factory.mktemp("students")
    train(student(root / "plain", "train.steps=12"), **QUIET)
    for weight in (0, 1):
        train(student(root / f"w{weight}", "train.steps=12", *with_teachers(teachers, weight=weight)), **QUIET)
    return root


def test_weight_zero_trains_bitwise_as_without_teachers(students):
    """train.distill.weight 0: the losses, the gold cross-entropy and the final weights are those of
    the run without teachers, bit for bit; the teacher part is still reported."""
    plain, w0 = students / "plain", students / "w0"
    assert losses(w0) == losses(plain) and losses(w0, "ce") == losses(plain, "ce")
    assert all(np.isfinite(losses(w0, "distill")))
    a = mx.load(str(plain / "checkpoints" / "last" / "model.safetensors"))
    b = mx.load(str(w0 / "checkpoints" / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(mx.array_equal(a[k], b[k]).item() for k in a)


def test_the_student_moves_toward_the_teachers(students):
    """With weight 1 the student's cross-entropy on the teachers' distribution falls faster than
    with weight 0 (gold targets only), from the same first step."""
    d0, d1 = losses(students / "w0", "distill"), losses(students / "w1", "distill")
    assert d0[0] == d1[0]
    assert np.mean(d1[-4:]) < np.mean(d0[-4:])
    assert d1[0] - np.mean(d1[-4:]) > d0[0] - np.mean(d0[-4:])
    assert losses(students / "w1") != losses(students / "w0")


def test_teachers_that_do_not_fit_the_student_are_refused(targets, tmp_path):
    """A teacher with another action vocabulary, or another data target, is one error naming the
    teacher and what differs."""
    cfg, data, _ = targets
    other_vocab = make_pointer_model_dir(tmp_path / "other_vocab")
    tokens = make_model_dir(tmp_path / "tokens")
    run = tmp_path / "run"
    run.mkdir()
    for teacher, what in ((other_vocab, "its output vocabulary differs from the student's"),
                          (tokens, "its data.target is 'tokens', the student's is 'actions'")):
        bad = student(run, f"train.distill.teachers=[{cfg.train.distill.teachers[0]}, {teacher}]")
        with pytest.raises(ConfigError) as err:
            distill.teacher_targets(bad, data, run, progress=False)
        message = str(err.value)
        assert message.startswith(f"train.distill.teachers: {teacher}: {what}") and "\n" not in message


def test_a_missing_teacher_is_one_line_and_leaves_no_run(tmp_path, cache):
    """vantage train with a teacher folder that does not exist: exit status 2, one line naming the
    option and the folder, no run folder."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-m", "vantage_core.cli", "train", "--config", str(POINTER),
                           "--set", f"run.dir={run}", "--set", f"train.distill.teachers=[{tmp_path / 'nowhere'}]"],
                          capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr  # a config error
    assert lines[0].startswith(f"error: train.distill.teachers: {tmp_path / 'nowhere'}: no such folder")
    assert not run.exists()


def test_resume_with_distill_is_bitwise_and_reads_the_cached_targets(teachers, tmp_path, monkeypatch):
    """An interrupted distilled run resumes to the losses (and teacher parts) of one that ran straight
    through; the resumed run reads the teachers' targets back from the cache instead of computing them."""
    from vantage_core.train.run import train

    sets = ["train.steps=8", *with_teachers(teachers, weight=0.5, temperature=2.0, top_k=8)]
    train(student(tmp_path / "straight", *sets), **QUIET)
    with monkeypatch.context() as m:
        interrupt_after(m, 3)
        train(student(tmp_path / "split", *sets), **QUIET)

    def computed(*args, **kwargs):
        raise AssertionError("the teacher targets were computed again")

    monkeypatch.setattr(distill, "compute_targets", computed)
    train(student(tmp_path / "split", *sets), resume=True, **QUIET)
    assert len(losses(tmp_path / "straight")) == 8
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")  # bitwise
    assert losses(tmp_path / "split", "distill") == losses(tmp_path / "straight", "distill")


def test_resume_refuses_teachers_that_changed(teachers, tmp_path, monkeypatch):
    """A teacher whose weights changed since the run started: --resume is one error saying so."""
    from vantage_core.train.run import train

    mine = [tmp_path / "t0", tmp_path / "t1"]
    for src, dst in zip(teachers, mine):
        shutil.copytree(src, dst)
    sets = ["train.steps=4", *with_teachers(mine)]
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        train(student(tmp_path / "run", *sets), **QUIET)
    shutil.copy(teachers[0] / "checkpoints" / "last" / "model.safetensors",
                mine[1] / "checkpoints" / "last" / "model.safetensors")
    with pytest.raises(ConfigError, match="teachers or the training data changed since this run started"):
        train(student(tmp_path / "run", *sets), resume=True, **QUIET)


def test_a_token_model_distills_too(tmp_path, cache):
    """data.target: tokens (the vocabulary head alone): the targets of a batch match a direct forward
    of the teacher on it, and a student trains with both parts of the loss reported."""
    from vantage_core.data.batching import make_batch
    from vantage_core.plugins import registry
    from vantage_core.train.distributed import init_world
    from vantage_core.train.run import train, training_data

    tokens = Path(__file__).parent / "fixtures" / "train_tiny.yaml"
    train(load_config(tokens, [f"run.dir={tmp_path / 'teacher'}", *PLAIN, "train.steps=4"]), **QUIET)
    sets = [f"run.dir={tmp_path / 'student'}", *PLAIN, "train.steps=3", f"train.distill.teachers={tmp_path / 'teacher'}",
            "train.distill.top_k=4", "train.distill.temperature=1.5"]
    cfg = load_config(tokens, sets)
    data = training_data(cfg, registry(), init_world(), tmp_path / "teacher" / "tokenizer", lambda *_: None)
    (tmp_path / "scratch").mkdir()
    tt = distill.teacher_targets(cfg, data, tmp_path / "scratch", progress=False)
    batch = make_batch(data.train, np.array([0, 3, 7]), data.tokenizer.pad_id)
    assert_teacher_entries(tt.batch_arrays(batch, data.tokenizer.vocab_size), batch,
                           direct_distribution([tmp_path / "teacher"], batch, 1.5))
    train(cfg, **QUIET)
    parts = losses(tmp_path / "student", "distill")
    assert len(parts) == 3 and all(np.isfinite(parts)) and losses(tmp_path / "student", "ce")
