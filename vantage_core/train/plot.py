"""``vantage plot RUN_DIR``: PNG figures of a run's loss curves and of expert load over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vantage_core.train.telemetry import read_metrics


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def moving_mean(values: np.ndarray, window: int) -> np.ndarray:
    """The mean of each value and the ``window - 1`` before it (fewer at the start)."""
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    head = np.array([values[:i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def _series(records: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts)
    return np.asarray(steps), np.asarray(values, dtype=np.float64)


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write ``loss.png``, ``expert_load.png`` (and ``eval.png`` when the run evaluated) under
    ``RUN_DIR/plots``; return the paths written."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("kind", "train") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    plt = _pyplot()
    written = []

    # Loss: the total and its parts; the auxiliary losses on their own axis (they are ~100x smaller).
    fig, (ax, ax_aux) = plt.subplots(1, 2, figsize=(11, 4))
    window = max(1, len(train) // 50)
    for key, style in (("loss", "-"), ("ce", "--")):
        steps, values = _series(train, key)
        if len(steps):
            ax.plot(steps, values, style, alpha=0.25)
            ax.plot(steps, moving_mean(values, window), style, label=key, color=ax.lines[-1].get_color())
    ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_yscale("log"), ax.set_title("training loss")
    ax.legend()
    for key in ("balance", "z"):
        steps, values = _series(train, key)
        if len(steps):
            ax_aux.plot(steps, moving_mean(values, window), label=key)
    ax_aux.set_xlabel("step"), ax_aux.set_title("auxiliary losses (weighted)")
    if ax_aux.lines:
        ax_aux.legend()
    fig.tight_layout()
    written.append(out / "loss.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)

    # Expert load: per layer, each expert's share of routed tokens over time (stacked).
    loads = [(r["step"], r["expert_load"]) for r in train if r.get("expert_load")]
    if loads:
        steps = np.asarray([s for s, _ in loads])
        shares = np.asarray([l for _, l in loads], dtype=np.float64)  # (steps, layers, experts)
        n_layers, n_experts = shares.shape[1:]
        cols = min(n_layers, 4)
        rows = (n_layers + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3 * rows), squeeze=False, sharey=True)
        w = max(1, len(steps) // 50)
        for layer in range(n_layers):
            a = axes[layer // cols][layer % cols]
            smoothed = np.stack([moving_mean(shares[:, layer, e], w) for e in range(n_experts)])
            a.stackplot(steps, smoothed, labels=[f"expert {e}" for e in range(n_experts)])
            a.axhline(1.0, color="k", lw=0.5)
            for e in range(1, n_experts):  # where a perfectly even split would put the boundaries
                a.axhline(e / n_experts, color="w", lw=0.4, ls=":")
            a.set_title(f"MoE layer {layer}"), a.set_xlabel("step"), a.set_ylim(0, 1)
        for k in range(n_layers, rows * cols):
            axes[k // cols][k % cols].axis("off")
        axes[0][0].set_ylabel("share of routed tokens")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=min(n_experts, 8))
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        written.append(out / "expert_load.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)

    # Validation metrics over steps.
    keys = sorted({k for r in evals for k, v in r.items() if k not in ("step", "kind") and isinstance(v, (int, float))})
    if keys:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key in keys:
            steps, values = _series(evals, key)
            ax.plot(steps, values, "o-", label=key)
        ax.set_xlabel("step"), ax.set_title("validation"), ax.legend()
        fig.tight_layout()
        written.append(out / "eval.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def load_balance(shares: list[list[float]]) -> float:
    """How evenly a step's tokens were spread: the mean over layers of (1 / E) / max share
    (1.0: perfectly even; 1/E: every token to one expert)."""
    arr = np.asarray(shares, dtype=np.float64)
    if arr.size == 0:
        return float("nan")
    return float(np.mean((1.0 / arr.shape[1]) / arr.max(axis=1)))
