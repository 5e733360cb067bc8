"""Plots of a run (matplotlib, Agg backend, PNG files): loss / λ / τ / τ2 traces, relation heatmaps, ablation bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rebalance_ref.files import atomic_path
from rebalance_torch.config import LOSS_NAMES


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".") or "png")
    _pyplot().close(fig)
    return path


def plot_traces(rows: list[dict], path: str | Path) -> Path | None:
    """Every loss term, λ, τ and τ2 against the global step (stage 2 continues stage 1's step axis) from the
    rows of `metrics.jsonl`; returns the file written, or None when there is nothing to plot."""
    rows = [r for r in rows if "loss" in r]
    if not rows:
        return None
    stage1_end = max((r["step"] for r in rows if r["stage"] == 1), default=0)
    x = np.array([r["step"] + (stage1_end if r["stage"] == 2 else 0) for r in rows])
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    terms = [k for k in ("loss",) + LOSS_NAMES if any(k in r for r in rows)]
    for k in terms:
        keep = [i for i, r in enumerate(rows) if k in r]
        axes[0].plot(x[keep], [rows[i][k] for i in keep], label=k, lw=1.2 if k == "loss" else 0.9)
    axes[0].set_yscale("log")
    axes[0].set_title("loss terms (unweighted; loss = weighted sum)")
    axes[0].legend(fontsize=7, ncol=2)
    for ax, key, title in ((axes[1], "lam", "λ (text-teacher weight)"), (axes[2], "tau", "τ (ITC temperature)"),
                           (axes[3], "tau2", "τ2 (relation temperature)")):
        keep = [i for i, r in enumerate(rows) if key in r]
        if keep:
            ax.plot(x[keep], [rows[i][key] for i in keep])
        ax.set_title(title)
    for ax in axes:
        ax.set_xlabel("step")
        if stage1_end and any(r["stage"] == 2 for r in rows):
            ax.axvline(stage1_end, color="grey", ls=":", lw=0.8)
    return _save(fig, path)


def plot_relations(matrices: dict[str, np.ndarray], path: str | Path) -> Path:
    """Heatmaps side by side (e.g. image teacher, text teacher, blend, student), each on its own colour scale,
    diagonals masked (only off-diagonal entries enter the distillation)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4 * len(matrices), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (name, m) in zip(axes, matrices.items(), strict=True):
        m = np.array(m, dtype=np.float64)
        np.fill_diagonal(m, np.nan)
        image = ax.imshow(m, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    return _save(fig, path)


def plot_ablation(table: dict[str, dict[str, tuple[float, float]]], metrics: list[tuple[str, str]],
                  path: str | Path, title: str = "") -> Path:
    """Grouped bars: per metric, each condition's mean paired difference vs the baseline with ±std error bars.
    `table[condition][metric] = (mean, std)`; `metrics` = [(key, label)]."""
    plt = _pyplot()
    conditions = list(table)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) * max(1, len(conditions)) / 2), 4))
    width = 0.8 / max(1, len(conditions))
    xs = np.arange(len(metrics))
    for c, cond in enumerate(conditions):
        means = [table[cond].get(k, (np.nan, 0))[0] for k, _ in metrics]
        stds = [table[cond].get(k, (np.nan, 0))[1] for k, _ in metrics]
        ax.bar(xs + (c - (len(conditions) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=cond)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels([label for _, label in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("difference vs baseline (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
