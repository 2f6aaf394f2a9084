"""The expert-specialization atlas: which experts receive which parts of a SQL query.

A trained model reads every example of a split teacher-forced (the gold SQL after the prompt);
each MoE layer's router decision is captured for the SQL tokens, and each token is tagged with
its SQL role (:mod:`vantage_core.data.sql_roles`). Per layer this gives a count matrix
``C[e, r]``: token-slots of role ``r`` routed to expert ``e`` (a top-k router gives k slots per
token). From it:

- ``I(expert; role)`` in bits, the mutual information of the joint ``C / C.sum()``;
- per expert, its specialization ``KL(p(role | e) || p(role))`` in bits (the p(e)-weighted
  mean of these is the mutual information);
- the same figures after shuffling which token got which experts (the marginals kept): the
  value a model with no specialization would show on this many tokens (finite samples bias
  mutual information upwards, so the baseline is not zero).

    record = collect_routing(model, tokenizer, examples, target_format(cfg.data))
    atlas = summarize(record)
    write_atlas(atlas, "runs/quickstart/analysis/experts-synthetic-test")
"""

from __future__ import annotations

import csv
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from vantage_core.data.sql_roles import ROLE_INDEX, ROLES
from vantage_core.errors import DataError, VantageError
from vantage_core.model.moe import capture_routing, moe_blocks

COPIED = ("generated", "copied")  # whether a token names a table or column of the schema


# ---------------------------------------------------------------------------- information

def count_matrix(experts: np.ndarray, labels: np.ndarray, num_experts: int, num_labels: int) -> np.ndarray:
    """(N, k) expert ids and (N,) label ids -> (E, L) counts of token-slots."""
    experts = np.asarray(experts).reshape(len(labels), -1)
    flat_labels = np.repeat(np.asarray(labels), experts.shape[1])  # (N*k,)
    counts = np.zeros((num_experts, num_labels), dtype=np.int64)
    np.add.at(counts, (experts.reshape(-1), flat_labels), 1)
    return counts


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in bits of a distribution (zeros ignored)."""
    p = np.asarray(p, dtype=np.float64)
    p = p[p > 0] / p.sum() if p.sum() > 0 else p[p > 0]
    return float(-(p * np.log2(p)).sum())


def mutual_information(counts: np.ndarray) -> float:
    """I(row; column) in bits of the joint distribution ``counts / counts.sum()``."""
    joint = np.asarray(counts, dtype=np.float64)
    total = joint.sum()
    if total == 0:
        return 0.0
    joint = joint / total
    outer = joint.sum(axis=1, keepdims=True) @ joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log2(joint[nz] / outer[nz])).sum())


def expert_specialization(counts: np.ndarray) -> np.ndarray:
    """Per row (expert): KL(p(label | expert) || p(label)) in bits; 0 for an expert with no tokens."""
    c = np.asarray(counts, dtype=np.float64)
    marginal = c.sum(axis=0) / max(c.sum(), 1)
    out = np.zeros(c.shape[0])
    for e, row in enumerate(c):
        if row.sum() == 0:
            continue
        p = row / row.sum()
        nz = p > 0
        out[e] = float((p[nz] * np.log2(p[nz] / marginal[nz])).sum())
    return out


def shuffled_baseline(experts: np.ndarray, labels: np.ndarray, num_experts: int, num_labels: int,
                      n_shuffles: int = 5, seed: int = 0) -> tuple[float, np.ndarray]:
    """Mean mutual information and mean per-expert specialization after shuffling which token
    got which experts (each token keeps its k experts together; both marginals stay)."""
    rng = np.random.default_rng(seed)
    experts = np.asarray(experts).reshape(len(labels), -1)
    mis, specs = [], []
    for _ in range(n_shuffles):
        c = count_matrix(experts[rng.permutation(len(labels))], labels, num_experts, num_labels)
        mis.append(mutual_information(c))
        specs.append(expert_specialization(c))
    return float(np.mean(mis)), np.mean(specs, axis=0)


# ---------------------------------------------------------------------------- routing capture

# ---------------------------------------------------------------------------- collection

@dataclass
class RoutingRecord:
    """Every analysed SQL token: its role, whether it is copied from the schema, its piece, and
    per MoE layer the experts it was sent to with their router weights."""

    num_experts: int
    roles: np.ndarray  # (N,) index into ROLES
    copied: np.ndarray  # (N,) bool
    pieces: list[str]
    experts: list[np.ndarray]  # per MoE layer (N, k) int
    weights: list[np.ndarray]  # per MoE layer (N, k) float
    n_examples: int = 0
    seconds: float = 0.0
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.experts)


def collect_routing(model: Any, tokenizer: Any, examples: Sequence[Any], target: Any, *,
                    batch_size: int = 16, progress: bool = True) -> RoutingRecord:
    """Run ``model`` teacher-forced over ``examples`` (their gold SQL written in ``target``'s
    format, a :class:`~vantage_core.data.targets.TargetFormat`) and record the routing of every
    output piece at the position that reads it."""
    import vantage_core  # noqa: F401  (the optimized BLAS before mlx)

    if not moe_blocks(model):
        raise VantageError("the model has no MoE layer (model.moe_every is 0): there is no routing to analyse")
    t0 = time.perf_counter()
    golds, skipped = [], Counter()
    for ex in examples:
        gold = target.teacher_forced(ex, tokenizer, model)
        if isinstance(gold, str):
            skipped[gold] += 1
        else:
            golds.append(gold)
    if not golds:
        raise DataError(f"none of the {len(examples)} examples could be analysed: {dict(skipped)}")
    golds.sort(key=lambda g: g.sort_key)  # similar lengths together: little padding

    def batches():
        for i in range(0, len(golds), batch_size):
            batch = golds[i:i + batch_size]
            tokens, host = target.teacher_forced_batch(batch, tokenizer)
            yield tokens, host, [(g.start, g.pieces) for g in batch]

    return _routing_record(model, batches(), -(-len(golds) // batch_size), progress, len(golds), skipped, t0)


def _routing_record(model: Any, batches: Any, n_batches: int, progress: bool, n_examples: int,
                    skipped: Counter, t0: float) -> RoutingRecord:
    """Run ``model`` over ``batches`` of (input ids (B, T), the schema encoder's host batch, per
    example (first position, its pieces' roles)) and record each piece's routing."""
    import mlx.core as mx

    n_layers = len(moe_blocks(model))
    roles, copied, piece_text = [], [], []
    experts: list[list[np.ndarray]] = [[] for _ in range(n_layers)]
    weights: list[list[np.ndarray]] = [[] for _ in range(n_layers)]
    num_experts = moe_blocks(model)[0].router.num_experts
    with capture_routing(model) as taps:
        for tokens, host, spans in _progress(batches, progress, "routing", n_batches):
            memory = model.encode_schema(model.schema_inputs(host))
            for tap in taps:
                tap.calls.clear()
            forward = getattr(model, "hidden", model)  # the final projection is not needed
            out, _ = forward(mx.array(tokens), memory)
            mx.eval(out, *[c.indices for t in taps for c in t.calls], *[c.weights for t in taps for c in t.calls])
            B, T = tokens.shape
            per_layer = [(np.array(t.calls[-1].indices).reshape(B, T, -1),
                          np.array(t.calls[-1].weights, dtype=np.float32).reshape(B, T, -1)) for t in taps]
            for b, (start, pieces) in enumerate(spans):
                pos = np.arange(start, start + len(pieces))
                roles += [ROLE_INDEX[p.role] for p in pieces]
                copied += [p.copied for p in pieces]
                piece_text += [p.piece for p in pieces]
                for layer, (idx, w) in enumerate(per_layer):
                    experts[layer].append(idx[b, pos])
                    weights[layer].append(w[b, pos])
    return RoutingRecord(num_experts=num_experts, roles=np.asarray(roles, dtype=np.int64),
                         copied=np.asarray(copied, dtype=bool), pieces=piece_text,
                         experts=[np.concatenate(x) for x in experts], weights=[np.concatenate(x) for x in weights],
                         n_examples=n_examples, seconds=time.perf_counter() - t0, skipped=dict(skipped))


def route_examples(model: Any, tokenizer: Any, examples: Sequence[Any], cfg: Any, *, batch_size: int = 16,
                   progress: bool = True) -> RoutingRecord:
    """The routing record of ``examples`` for the target format of ``cfg``."""
    from vantage_core.data.targets import target_format

    return collect_routing(model, tokenizer, examples, target_format(cfg.data), batch_size=batch_size,
                           progress=progress)


def _progress(items: Any, enabled: bool, desc: str, total: int | None = None):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="batch", total=total)


# ---------------------------------------------------------------------------- summary

@dataclass
class LayerAtlas:
    layer: int  # index among the MoE layers
    counts: np.ndarray  # (E, R) token-slots per expert and role
    copied_counts: np.ndarray  # (E, 2) token-slots per expert: generated / copied
    mi: float  # I(expert; role), bits
    mi_shuffled: float
    mi_copied: float  # I(expert; copied), bits
    mi_copied_shuffled: float
    specialization: np.ndarray  # (E,) KL(p(role|e) || p(role)), bits
    specialization_shuffled: np.ndarray  # (E,)
    top_pieces: list[list[tuple[str, int]]]  # per expert: most frequent pieces
    mi_init: float | None = None  # the same architecture untrained (see :func:`init_baseline`)


@dataclass
class Atlas:
    name: str
    layers: list[LayerAtlas]
    role_entropy: float  # H(role) in bits: the most any layer's MI can reach with top-1 routing
    n_tokens: int
    n_examples: int
    num_experts: int
    seconds: float
    info: dict = field(default_factory=dict)


def summarize(record: RoutingRecord, name: str = "model", n_shuffles: int = 5, seed: int = 0,
              top_pieces: int = 8) -> Atlas:
    """The atlas of a :class:`RoutingRecord`: per layer counts, mutual information and
    per-expert specialization, each beside its shuffled-routing baseline."""
    E, R = record.num_experts, len(ROLES)
    copied = record.copied.astype(np.int64)
    layers = []
    for li, idx in enumerate(record.experts):
        counts = count_matrix(idx, record.roles, E, R)
        ccounts = count_matrix(idx, copied, E, 2)
        mi_s, spec_s = shuffled_baseline(idx, record.roles, E, R, n_shuffles, seed + li)
        mic_s, _ = shuffled_baseline(idx, copied, E, 2, n_shuffles, seed + 1000 + li)
        by_expert: list[Counter] = [Counter() for _ in range(E)]
        for n, row in enumerate(idx):
            for e in row:
                by_expert[int(e)][record.pieces[n]] += 1
        layers.append(LayerAtlas(li, counts, ccounts, mutual_information(counts), mi_s,
                                 mutual_information(ccounts), mic_s, expert_specialization(counts), spec_s,
                                 [c.most_common(top_pieces) for c in by_expert]))
    role_counts = np.bincount(record.roles, minlength=R)
    return Atlas(name, layers, entropy(role_counts), int(len(record.roles)), record.n_examples, E,
                 record.seconds, {"skipped": record.skipped})


# ---------------------------------------------------------------------------- output

def _normalize(m: np.ndarray, axis: int) -> np.ndarray:
    s = m.sum(axis=axis, keepdims=True)
    return np.divide(m, s, out=np.zeros_like(m, dtype=np.float64), where=s > 0)


def write_atlas(atlas: Atlas, out_dir: str | Path, plots: bool = True) -> dict[str, Path]:
    """CSV tables, a JSON summary and (``plots``) heatmaps per layer and a specialization chart."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"counts": out / "counts.csv", "experts": out / "experts.csv", "layers": out / "layers.csv",
             "summary": out / "atlas.json"}
    with open(files["counts"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "expert", "role", "slots", "share_of_expert", "share_of_role"])
        for la in atlas.layers:
            by_e, by_r = _normalize(la.counts, 1), _normalize(la.counts, 0)
            for e in range(atlas.num_experts):
                for r, role in enumerate(ROLES):
                    w.writerow([la.layer, e, role, int(la.counts[e, r]), f"{by_e[e, r]:.4f}", f"{by_r[e, r]:.4f}"])
    with open(files["experts"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "expert", "slots", "load", "top_role", "top_role_share", "copied_share",
                    "specialization_bits", "shuffled_bits", "top_pieces"])
        for la in atlas.layers:
            total = max(la.counts.sum(), 1)
            for e in range(atlas.num_experts):
                row = la.counts[e]
                top = int(row.argmax()) if row.sum() else 0
                cshare = la.copied_counts[e, 1] / max(la.copied_counts[e].sum(), 1)
                w.writerow([la.layer, e, int(row.sum()), f"{row.sum() / total:.4f}", ROLES[top],
                            f"{row[top] / max(row.sum(), 1):.4f}", f"{cshare:.4f}",
                            f"{la.specialization[e]:.4f}", f"{la.specialization_shuffled[e]:.4f}",
                            " ".join(f"{p!r}:{n}" for p, n in la.top_pieces[e])])
    with open(files["layers"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "mi_role_bits", "mi_role_shuffled_bits", "normalized_mi", "mi_copied_bits",
                    "mi_copied_shuffled_bits", "role_entropy_bits", "tokens", "mi_role_untrained_bits"])
        for la in atlas.layers:
            w.writerow([la.layer, f"{la.mi:.4f}", f"{la.mi_shuffled:.4f}", f"{la.mi / max(atlas.role_entropy, 1e-12):.4f}",
                        f"{la.mi_copied:.4f}", f"{la.mi_copied_shuffled:.4f}", f"{atlas.role_entropy:.4f}", atlas.n_tokens,
                        "" if la.mi_init is None else f"{la.mi_init:.4f}"])
    files["summary"].write_text(json.dumps(atlas_summary(atlas), indent=2) + "\n")
    if plots:
        files.update(plot_atlas(atlas, out))
    return files


def atlas_summary(atlas: Atlas) -> dict[str, Any]:
    """The headline figures as plain data (what ``atlas.json`` holds)."""
    return {"name": atlas.name, "examples": atlas.n_examples, "tokens": atlas.n_tokens,
            "num_experts": atlas.num_experts, "seconds": round(atlas.seconds, 3),
            "role_entropy_bits": round(atlas.role_entropy, 4), "roles": list(ROLES), **atlas.info,
            "layers": [{"layer": la.layer, "mi_role_bits": round(la.mi, 4),
                        "mi_role_shuffled_bits": round(la.mi_shuffled, 4),
                        "mi_role_untrained_bits": None if la.mi_init is None else round(la.mi_init, 4),
                        "mi_copied_bits": round(la.mi_copied, 4),
                        "mi_copied_shuffled_bits": round(la.mi_copied_shuffled, 4),
                        "specialization_bits": [round(float(x), 4) for x in la.specialization],
                        "specialization_shuffled_bits": [round(float(x), 4) for x in la.specialization_shuffled]}
                       for la in atlas.layers]}


def plot_atlas(atlas: Atlas, out_dir: str | Path) -> dict[str, Path]:
    """``heatmap_layer<i>.png`` per MoE layer (p(role | expert) and p(expert | role)) and
    ``specialization.png`` (MI per layer and per-expert scores, model vs shuffled routing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    files = {}
    present = [r for r in range(len(ROLES)) if any(la.counts[:, r].sum() for la in atlas.layers)]
    labels = [ROLES[r] for r in present]
    for la in atlas.layers:
        counts = la.counts[:, present].astype(np.float64)
        fig, axes = plt.subplots(2, 1, figsize=(max(7.0, 0.6 * len(present) + 2.5), 2 * (1.0 + 0.4 * atlas.num_experts) + 2.2),
                                 constrained_layout=True)
        for ax, mat, title in ((axes[0], _normalize(counts, 1), "p(role | expert): what each expert receives"),
                               (axes[1], _normalize(counts, 0), "p(expert | role): where each role goes")):
            im = ax.imshow(mat, aspect="auto", cmap="viridis", vmin=0, vmax=max(mat.max(), 1e-9))
            ax.set_xticks(range(len(labels)), labels, rotation=55, ha="right", fontsize=8)
            ax.set_yticks(range(atlas.num_experts), [f"expert {e}" for e in range(atlas.num_experts)], fontsize=8)
            ax.set_title(title, fontsize=9)
            for e in range(mat.shape[0]):
                for r in range(mat.shape[1]):
                    if mat.shape[1] * mat.shape[0] <= 200:
                        ax.text(r, e, f"{mat[e, r]:.2f}", ha="center", va="center", fontsize=6,
                                color="white" if mat[e, r] < 0.6 * mat.max() else "black")
            fig.colorbar(im, ax=ax, shrink=0.8)
        fig.suptitle(f"{atlas.name}: MoE layer {la.layer}  I(expert; role) = {la.mi:.3f} bits "
                     f"(shuffled {la.mi_shuffled:.3f}; H(role) = {atlas.role_entropy:.2f})", fontsize=10)
        path = out / f"heatmap_layer{la.layer}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        files[f"heatmap_layer{la.layer}"] = path

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    x = np.arange(len(atlas.layers))
    with_init = all(la.mi_init is not None for la in atlas.layers)
    width = 0.27 if with_init else 0.4
    axes[0].bar(x - width / (1 if with_init else 2), [la.mi for la in atlas.layers], width, label="model")
    if with_init:
        axes[0].bar(x, [la.mi_init for la in atlas.layers], width, label="same model untrained")
    axes[0].bar(x + width / (1 if with_init else 2), [la.mi_shuffled for la in atlas.layers], width,
                label="shuffled routing")
    axes[0].set_xticks(x, [f"layer {la.layer}" for la in atlas.layers])
    axes[0].set_ylabel("I(expert; role), bits")
    axes[0].set_title(f"{atlas.name}: specialization per MoE layer")
    axes[0].legend()
    spec = np.stack([la.specialization for la in atlas.layers])  # (L, E)
    im = axes[1].imshow(spec, aspect="auto", cmap="magma")
    axes[1].set_xticks(range(atlas.num_experts), [f"e{e}" for e in range(atlas.num_experts)])
    axes[1].set_yticks(x, [f"layer {la.layer}" for la in atlas.layers])
    axes[1].set_title("per-expert KL(p(role|e) || p(role)), bits")
    fig.colorbar(im, ax=axes[1])
    path = out / "specialization.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    files["specialization"] = path
    return files


def plot_comparison(atlases: Sequence[Atlas], path: str | Path) -> Path:
    """Mutual information per MoE layer of several models side by side, each with its baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_layers = max(len(a.layers) for a in atlases)
    width = 0.8 / len(atlases)
    fig, ax = plt.subplots(figsize=(max(6, 2 + 1.5 * n_layers * len(atlases) / 2), 4), constrained_layout=True)
    for i, a in enumerate(atlases):
        x = np.arange(len(a.layers)) - 0.4 + width * (i + 0.5)
        ax.bar(x, [la.mi for la in a.layers], width * 0.9, label=a.name)
        ax.scatter(x, [la.mi_shuffled for la in a.layers], color="black", marker="_", s=200, zorder=3,
                   label="shuffled routing" if i == 0 else None)
        if all(la.mi_init is not None for la in a.layers):
            ax.scatter(x, [la.mi_init for la in a.layers], color="black", marker="x", zorder=3,
                       label="untrained" if i == 0 else None)
    ax.set_xticks(range(n_layers), [f"layer {i}" for i in range(n_layers)])
    ax.set_ylabel("I(expert; role), bits")
    ax.set_title("Expert specialization per MoE layer")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


# ---------------------------------------------------------------------------- from a run

def load_examples(cfg: Any, dataset: str, split: str, limit: int | None = None,
                  echo: Callable[[str], None] | None = None) -> list[Any]:
    """The examples of ``dataset``'s ``split``. When the run's config lists a source of that
    name, its parameters are reused (so a generated dataset is generated the same way)."""
    from vantage_core.config import DataSource
    from vantage_core.data.pipeline import load_source

    spec = None
    for slot in ("test", "validation", "train"):
        for s in getattr(cfg.data, slot, []):
            if s.name == dataset:
                spec = s
                break
        if spec is not None:
            break
    params = {k: v for k, v in (spec.params if spec is not None else {}).items()}
    spec = DataSource(name=dataset, split=split, limit=limit, **params)
    report, _ = load_source(spec, split)
    if echo:
        echo(report.summary(dataset, split))
    if not report.examples:
        raise DataError(f"dataset {dataset!r} split {split!r}: no examples")
    return report.examples


def init_baseline(atlas: Atlas, cfg: Any, tokenizer: Any, examples: Sequence[Any], *, batch_size: int = 16,
                  seed: int = 0, progress: bool = False) -> None:
    """Set ``mi_init`` on each layer of ``atlas``: I(expert; role) of the same architecture with
    fresh weights on the same examples. A router sees the token's hidden state, so even an
    untrained one sends tokens by identity (and so partly by role), most of all in the first
    layer; a trained model's specialization is what it adds beyond this."""
    import mlx.core as mx

    from vantage_core.model import build_model

    mx.random.seed(seed)
    fresh = build_model(cfg.model, tokenizer)
    mx.eval(fresh.parameters())
    fresh.eval()
    record = route_examples(fresh, tokenizer, examples, cfg, batch_size=batch_size, progress=progress)
    for la, idx in zip(atlas.layers, record.experts):
        la.mi_init = mutual_information(count_matrix(idx, record.roles, atlas.num_experts, len(ROLES)))


@dataclass(frozen=True)
class AtlasOptions:
    """How :func:`analyze_run` routes and what it writes."""

    limit: int | None = None  # route only the first N examples
    batch_size: int = 16
    n_shuffles: int = 5  # shuffled-routing baselines averaged
    untrained: bool = False  # also route through the same architecture with fresh weights (init_baseline)
    plots: bool = True  # heatmaps beside the tables
    progress: bool = True


def analyze_run(run_dir: str | Path, dataset: str, split: str, options: AtlasOptions = AtlasOptions(), *,
                out_dir: str | Path | None = None, name: str | None = None,
                echo: Callable[[str], None] | None = None) -> tuple[Atlas, dict[str, Path]]:
    """Load the model of ``run_dir`` (a run, checkpoint or export folder), route ``split`` of
    ``dataset`` through it, and write the atlas to ``out_dir`` (default
    ``<run_dir>/analysis/experts-<dataset>-<split>``); ``name``: the atlas's name (default: the
    folder's)."""
    from vantage_core.model.io import load_model

    model, tokenizer, cfg, info = load_model(run_dir)
    examples = load_examples(cfg, dataset, split, options.limit, echo)
    record = route_examples(model, tokenizer, examples, cfg, batch_size=options.batch_size, progress=options.progress)
    run_name = name or Path(run_dir).resolve().name
    router = cfg.model.router.name
    atlas = summarize(record, name=run_name if router in run_name else f"{run_name} ({router})",
                      n_shuffles=options.n_shuffles)
    if options.untrained:
        init_baseline(atlas, cfg, tokenizer, examples, batch_size=options.batch_size, seed=cfg.run.seed,
                      progress=options.progress)
    atlas.info.update({"run": str(run_dir), "checkpoint": info.get("folder"), "dataset": dataset,
                       "split": split, "router": cfg.model.router.name})
    out = Path(out_dir) if out_dir else Path(run_dir) / "analysis" / f"experts-{dataset}-{split}"
    return atlas, write_atlas(atlas, out, plots=options.plots)
