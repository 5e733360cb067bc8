"""Plots of a run (matplotlib, Agg backend, PNG files): training traces, relation heatmaps, the modality gap, the
comparison of runs, ablation bars. Every figure names what it shows in its title and labels its axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rebalance_ref.files import atomic_path
from rebalance_ref.metrics import modality_gap
from rebalance_torch.config import LOSS_NAMES, STRUCTURE_TERMS

# Names of the four relation matrices, in the order drawn; each has one shared colour scale.
RELATION_NAMES = (("s_i", "image teacher S_I"), ("s_t", "text teacher S_T"), ("e", "blend E = λS_T + (1−λ)S_I"),
                  ("s_f", "student S_F"))
# Diagnostics of the embedding geometry (not scores: see rebalance.report.COLUMN_LEGEND for how to read each).
DIAGNOSTICS = (("modality_gap", "modality gap\n(centroid distance)"), ("alignment", "alignment\n(lower: pairs closer)"),
               ("uniformity_image", "uniformity, images\n(lower: more spread)"),
               ("uniformity_text", "uniformity, captions\n(lower: more spread)"))


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 100, bbox_inches: str | None = None) -> Path:
    """Write `fig` to `path` atomically (format from the suffix, PNG by default) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None and bbox_inches is None:
        fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches=bbox_inches, format=path.suffix.lstrip(".") or "png")
    pyplot().close(fig)
    return path


# --- training traces ------------------------------------------------------------------------------------------

def plot_traces(rows: list[dict], path: str | Path, stage1_steps: int | None = None,
                weights: dict[str, float] | None = None, itm_prior: float | None = None) -> Path | None:
    """Loss terms, the weighted loss, validation R-mean, τ, τ2 and λ against the global step (stage 2 continues
    stage 1's step axis; a folder holding stage 2 alone is shifted by `stage1_steps`), the stage boundary marked.
    `weights` (the stage-2 weights) tells whether λ and τ2 were trained at all: without a structure term they are
    not, and their panels say so instead of drawing a flat line. `itm_prior`: the ITM loss of a head that learned
    nothing, drawn as a dotted line. Returns the file, or None when nothing was logged."""
    logged = [r for r in rows if "loss" in r]
    if not logged:
        return None
    has_stage1 = any(r["stage"] == 1 for r in rows)
    boundary = max((r["step"] for r in rows if r["stage"] == 1), default=0) if has_stage1 else (stage1_steps or 0)
    has_stage2 = any(r["stage"] == 2 for r in rows)

    def x_of(rs):
        return np.array([r["step"] + (boundary if r["stage"] == 2 else 0) for r in rs])

    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.2), sharex=True, layout="constrained")
    ax_terms, ax_loss, ax_val, ax_tau, ax_tau2, ax_lam = axes.ravel()
    for k in [k for k in LOSS_NAMES if any(k in r for r in logged)]:
        keep = [r for r in logged if k in r]
        ax_terms.plot(x_of(keep), [r[k] for r in keep], label=k.upper(), lw=1.0)
    if itm_prior is not None and any("itm" in r for r in logged):
        ax_terms.axhline(itm_prior, color="tab:orange", ls=":", lw=1.0, label=f"ITM at its prior ({itm_prior:.3f})")
    ax_terms.set_yscale("log")
    ax_terms.set_title("each loss term (unweighted)")
    ax_terms.set_ylabel("term value (log scale)")
    ax_terms.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), framealpha=0.9)
    ax_loss.plot(x_of(logged), [r["loss"] for r in logged], color="black", lw=1.0)
    ax_loss.set_title("training loss (weighted sum of the terms)")
    ax_loss.set_ylabel("loss")
    val = [r for r in rows if "val" in r and "cos_r_mean" in r["val"]]
    if val:
        ax_val.plot(x_of(val), [r["val"]["cos_r_mean"] for r in val], marker="o", ms=3, color="tab:green")
    ax_val.set_title("validation R-mean (selects the checkpoint)")
    ax_val.set_ylabel("R-mean (%)")
    untrained = weights is not None and not any(weights.get(k, 0.0) for k in STRUCTURE_TERMS)
    for ax, key, title, ylabel in ((ax_tau, "tau", "τ: ITC temperature (learned)", "τ"),
                                   (ax_tau2, "tau2", "τ2: relation temperature (stage 2)", "τ2"),
                                   (ax_lam, "lam", "λ: text-teacher weight in E (stage 2)", "λ")):
        keep = [r for r in logged if key in r]
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        if key in ("tau2", "lam") and untrained:
            value = f" (stays at {keep[-1][key]:.3g})" if keep else ""
            ax.text(0.5, 0.5, f"not trained in this run:\nno KD, KDI or KDT weight{value}", ha="center",
                    va="center", transform=ax.transAxes, fontsize=10, color="grey")
            ax.set_yticks([])
        elif keep:
            ax.plot(x_of(keep), [r[key] for r in keep], color="tab:purple")
    for ax in axes[1]:
        ax.set_xlabel("training step (stage 1, then stage 2)")
    for ax in axes.ravel():
        if has_stage2 and boundary:
            ax.axvline(boundary, color="grey", ls="--", lw=0.9)
            ax.text(boundary, 1.0, " stage 2 → ", transform=ax.get_xaxis_transform(), ha="left", va="top",
                    fontsize=8, color="grey")
        if has_stage2 and boundary and not has_stage1:
            ax.set_xlim(left=0)
            ax.text(boundary / 2, 0.5, "stage 1\n(in the\ninit run)", transform=ax.get_xaxis_transform(),
                    ha="center", va="center", fontsize=8, color="grey")
    return save_figure(fig, path)


# --- relation matrices ----------------------------------------------------------------------------------------

def _label_groups(ax, labels: list[str]) -> None:
    """Tick labels at the centre of each run of equal labels, and thin lines between the runs."""
    if not labels:
        ax.set_xticks([])
        ax.set_yticks([])
        return
    starts = [0] + [i for i in range(1, len(labels)) if labels[i] != labels[i - 1]]
    ends = starts[1:] + [len(labels)]
    centres = [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)]
    names = [labels[a] for a in starts]
    for axis in (ax.set_xticks, ax.set_yticks):
        axis(centres)
    ax.set_xticklabels(names, rotation=90, fontsize=6)
    ax.set_yticklabels(names, fontsize=6)
    for s in starts[1:]:
        ax.axhline(s - 0.5, color="white", lw=0.5)
        ax.axvline(s - 0.5, color="white", lw=0.5)


def plot_relations(phases: dict[str, object], path: str | Path) -> Path:
    """Per phase (a row: e.g. "start of stage 2", "end of stage 2"), the relation matrices S_I, S_T, E and S_F of
    `rebalance_torch.diagnostics.Relations` on ONE colour scale shared by all of them, and |S_F − E| with the KD
    value in its title on a second scale shared by the rows. Items are sorted by a scene attribute (tick labels);
    diagonals are blank (only off-diagonal entries enter the distillation)."""
    plt = pyplot()
    phases = {name: r for name, r in phases.items() if r is not None}
    if not phases:
        raise ValueError("plot_relations: no relation matrices to draw")

    def offdiag(m):
        m = np.array(m, dtype=np.float64)
        np.fill_diagonal(m, np.nan)
        return m

    mats = {name: {k: offdiag(getattr(r, k)) for k, _ in RELATION_NAMES} for name, r in phases.items()}
    diffs = {name: np.abs(m["s_f"] - m["e"]) for name, m in mats.items()}
    lo = min(np.nanmin(m) for ms in mats.values() for m in ms.values())
    hi = max(np.nanmax(m) for ms in mats.values() for m in ms.values())
    dhi = max(np.nanmax(d) for d in diffs.values())
    fig, axes = plt.subplots(len(phases), 5, figsize=(20, 4.0 * len(phases) + 0.9), squeeze=False,
                             layout="constrained")
    for row, (name, r) in enumerate(phases.items()):
        for col, (key, title) in enumerate(RELATION_NAMES):
            ax = axes[row, col]
            image = ax.imshow(mats[name][key], cmap="viridis", vmin=lo, vmax=hi)
            extra = f" (λ = {r.lam:.2f})" if key == "e" else f" ({r.student_relation})" if key == "s_f" else ""
            ax.set_title(title + extra, fontsize=9)
            _label_groups(ax, r.labels)
        axes[row, 0].set_ylabel(f"{name}\nitems sorted by {r.sort_by}", fontsize=9)
        ax = axes[row, 4]
        diff_image = ax.imshow(diffs[name], cmap="magma", vmin=0.0, vmax=dhi)
        ax.set_title(f"|S_F − E|: KD ({r.distance}) = {r.kd:.3f}", fontsize=9)
        _label_groups(ax, r.labels)
    fig.colorbar(image, ax=list(axes[:, :4].ravel()), shrink=0.8, label="cosine / τ2 (one scale for S_I, S_T, E, S_F)")
    fig.colorbar(diff_image, ax=list(axes[:, 4]), shrink=0.8, label="|S_F − E|")
    tau2 = "; ".join(f"{name}: τ2 = {r.tau2:.3f}" for name, r in phases.items())
    n = len(next(iter(phases.values())).s_f)
    fig.suptitle(f"Relation matrices of {n} training items (one caption each); structure distillation (KD) pulls "
                 f"the student's S_F toward the teachers' blend E\n{tau2}", fontsize=11)
    return save_figure(fig, path)


# --- the modality gap -----------------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def plot_modality_gap(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path) -> Path:
    """Per run, its unit image embeddings v and caption embeddings t projected on one basis shared by all panels
    (so they compare): the panels' mean gap direction, and the first principal axis orthogonal to it; the gap vector
    mean(v) − mean(t) drawn from the caption centroid to the image centroid. Titles give the gap measured in the
    full space, ‖mean v − mean t‖ (`rebalance_ref.metrics.modality_gap`)."""
    if not panels:
        raise ValueError("plot_modality_gap: no embeddings to draw")
    units = {name: (_unit(v), _unit(t)) for name, (v, t) in panels.items()}
    everything = np.concatenate([np.concatenate(vt) for vt in units.values()])
    centre = everything.mean(0)
    # Axis 1: the panels' mean gap direction (the top principal axes need not show the gap at all); axis 2: the
    # first principal axis of what is left once that direction is removed.
    gap = np.mean([v.mean(0) - t.mean(0) for v, t in units.values()], axis=0)
    first = gap / max(np.linalg.norm(gap), 1e-12)
    rest = (everything - centre) - np.outer((everything - centre) @ first, first)
    second = np.linalg.svd(rest, full_matrices=False)[2][0]
    basis = np.stack([first, second], axis=1)             # (D, 2)
    total = np.sum((everything - centre) ** 2)
    share = np.sum(((everything - centre) @ basis) ** 2, axis=0) / total
    plt = pyplot()
    fig, axes = plt.subplots(1, len(units), figsize=(5.2 * len(units), 5), squeeze=False, sharex=True, sharey=True)
    for ax, (name, (v, t)) in zip(axes[0], units.items(), strict=True):
        pv, pt = (v - centre) @ basis, (t - centre) @ basis
        ax.scatter(pt[:, 0], pt[:, 1], s=3, alpha=0.25, color="tab:orange", label=f"captions t ({len(t)})")
        ax.scatter(pv[:, 0], pv[:, 1], s=5, alpha=0.45, color="tab:blue", label=f"images v ({len(v)})")
        mv, mt = pv.mean(0), pt.mean(0)
        ax.annotate("", xy=mv, xytext=mt, arrowprops=dict(arrowstyle="->", color="black", lw=2))
        ax.plot(*mt, marker="o", color="darkorange", mec="black", ms=7)
        ax.plot(*mv, marker="o", color="navy", mec="black", ms=7)
        ax.set_title(f"{name}\ngap ‖mean v − mean t‖ = {modality_gap(*panels[name]):.2f}", fontsize=10)
        ax.set_xlabel(f"gap direction mean(v) − mean(t) ({100 * share[0]:.0f} % of variance)")
        ax.legend(fontsize=8, loc="best", markerscale=3, title="arrow: mean t → mean v", title_fontsize=8)
    axes[0, 0].set_ylabel(f"first principal axis of the rest ({100 * share[1]:.0f} % of variance)")
    fig.suptitle("Modality gap: test-split embeddings (unit length) in one shared 2-D projection", fontsize=11)
    return save_figure(fig, path)


# --- comparison of runs and ablations -------------------------------------------------------------------------

def _grouped_bars(ax, rows: dict[str, dict[str, float]], keys: list[tuple[str, str]]) -> None:
    width = 0.8 / max(1, len(rows))
    xs = np.arange(len(keys))
    for c, (name, r) in enumerate(rows.items()):
        values = [r.get(k, np.nan) for k, _ in keys]
        ax.bar(xs + (c - (len(rows) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(xs)
    ax.set_xticklabels([label for _, label in keys], rotation=30, ha="right", fontsize=8)
    ax.axhline(0, color="black", lw=0.6)


def plot_comparison(rows: dict[str, dict[str, float]], quality: list[tuple[str, str]], path: str | Path,
                    title: str = "") -> Path:
    """Runs side by side on the test split, quality metrics (R-mean, NDCG: higher is better) on one axis and the
    geometry diagnostics (modality gap, alignment, uniformity: no "better" direction shared with quality) on a
    separate one. `rows[run][key]`; `quality` = [(key, label)]."""
    plt = pyplot()
    diag = [(k, label) for k, label in DIAGNOSTICS if any(k in r for r in rows.values())]
    fig, (ax_q, ax_d) = plt.subplots(1, 2, figsize=(16, 4.8), gridspec_kw={"width_ratios": [2.6, 1]})
    _grouped_bars(ax_q, rows, quality)
    ax_q.set_ylabel("points (%), higher is better")
    ax_q.set_title("retrieval quality (test split)", fontsize=10)
    top = max((r.get(k, 0.0) for r in rows.values() for k, _ in quality), default=1.0)
    ax_q.set_ylim(0, 1.25 * top)  # headroom: the legend sits above the bars, hiding none
    ax_q.legend(fontsize=8, loc="upper left", ncol=len(rows), framealpha=0.9)
    _grouped_bars(ax_d, rows, diag)
    ax_d.set_ylabel("value (read each by its label)")
    ax_d.set_title("geometry diagnostics (not scores)", fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_ablation(table: dict[str, dict[str, tuple[float, float]]], metrics: list[tuple[str, str]],
                  path: str | Path, title: str = "", ylabel: str = "difference vs baseline (points)") -> Path:
    """Grouped bars: per metric, each condition's mean paired difference vs the baseline with ±std error bars.
    `table[condition][metric] = (mean, std)`; `metrics` = [(key, label)]."""
    plt = pyplot()
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
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
