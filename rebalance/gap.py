"""Mind the Gap on our student (docs/gap.md): the experiments as functions, their figures, and what `rebalance gap`
runs.

- `run_gap(run_dir)`: a trained run's gap vector and distance on its test split, and the shift experiment there
  (loss vs the shifted gap at several temperatures, `rebalance_ref.gap.shift_curve`);
- `cone_at_init(config, seeds)`: the student's mean cosine within each modality and its gap at initialisation, one
  random init per seed (each init makes its own cone);
- `tau_sweep(config, taus, out)`: stage 1 from scratch with τ pinned at each value, the gap on the validation split
  every `segment` steps and the shift curve of the end point;
- `plot_*`: one figure per experiment; `random_mlp_cone` is in `rebalance_ref.gap`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rebalance.plots import pyplot, save_figure
from rebalance_ref import gap
from rebalance_ref.metrics import modality_gap

# The shift experiment's grid: λ in [-5, 5) by 0.25, and the temperatures 1/100 ... 1 (1/τ = 100, 50, 30, 20, 10, 1).
SHIFT_LAMS = tuple(np.arange(-5.0, 5.0, 0.25))
SHIFT_TAUS = (0.01, 0.02, 1 / 30, 0.05, 0.1, 1.0)


# τ is pinned in `tau_sweep` by clamping it to [τ, τ (1 + TAU_PIN)] after every step (the clamp needs low < high).
TAU_PIN = 1e-6


def gap_of_student(student, split, tokenizer, taus=SHIFT_TAUS, lams=SHIFT_LAMS, device: str = "cpu") -> dict:
    """The gap vector, its length and the shift curve of a student on a split (one pair per image)."""
    from rebalance_torch.evaluate import encode_split

    emb = encode_split(student, split, tokenizer, device=device, keep_tokens=False)
    # one pair per image (the image and its first caption), so that no chunk holds two captions of one image
    v, t = emb.v, emb.t[_first_captions(emb.txt2img)]
    return {"gap_vector": gap.gap_vector(emb.v, emb.t), "modality_gap": modality_gap(emb.v, emb.t),
            "mean_cosine_image": gap.mean_cosine(emb.v), "mean_cosine_text": gap.mean_cosine(emb.t),
            "shift": gap.shift_curve(v, t, taus, lams)}


def _first_captions(txt2img: np.ndarray) -> np.ndarray:
    """The row of each image's first caption in image-major order."""
    counts = np.bincount(txt2img)
    return np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)


def run_gap(run_dir, which: str = "best", split: str = "test", taus=SHIFT_TAUS, lams=SHIFT_LAMS,
            device: str = "cpu") -> dict:
    """`gap_of_student` for a run folder's student (`which` checkpoint) on one of its splits."""
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits

    student, config, tokenizer = load_student(run_dir, which=which, map_location=device)
    splits = load_splits(config)
    if split not in splits:
        raise ValueError(f"split must be one of {', '.join(splits)}, got {split!r}")
    return gap_of_student(student, splits[split], tokenizer, taus, lams, device)


def cone_at_init(config, seeds=(0, 1, 2), split: str = "test") -> dict:
    """Mean pairwise cosine of the student's v and t, and the gap between them, at initialisation (no training),
    for each seed's random init: {"seed": [...], "mean_cosine_image": [...], "mean_cosine_text": [...],
    "modality_gap": [...], "cosine_between_centroids": [...]}."""
    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch.data import load_splits
    from rebalance_torch.evaluate import encode_split
    from rebalance_torch.prepare import build_student

    splits = load_splits(config)
    tokenizer = Tokenizer.build(splits["train"].pairs()[1], max_len=config.max_len)
    out: dict[str, list] = {"seed": [], "mean_cosine_image": [], "mean_cosine_text": [], "modality_gap": [],
                            "cosine_between_centroids": []}
    for seed in seeds:
        student = build_student(config.replace(seed=int(seed)), tokenizer)
        emb = encode_split(student, splits[split], tokenizer, keep_tokens=False)
        cv, ct = emb.v.mean(0), emb.t.mean(0)
        out["seed"].append(int(seed))
        out["mean_cosine_image"].append(gap.mean_cosine(emb.v))
        out["mean_cosine_text"].append(gap.mean_cosine(emb.t))
        out["modality_gap"].append(modality_gap(emb.v, emb.t))
        out["cosine_between_centroids"].append(float(cv @ ct / (np.linalg.norm(cv) * np.linalg.norm(ct))))
    return out


def tau_sweep(config, taus, out_dir, segment: int = 50, log=print) -> dict:
    """Stage 1 from scratch at each pinned τ (initialised at τ and clamped to [τ, τ (1 + TAU_PIN)] after every
    step), `config.stage1_steps` steps; the gap on the validation split every `segment` steps (training resumed
    between segments, exactly), and the end point's shift curve on the test split at that τ. One run folder per τ
    under `out_dir`. Returns {"tau": [...], "steps": [...], "gap": [[...] per τ], "final": [gap_of_student
    dict per τ]}."""
    from rebalance_torch.checkpoint import load_student
    from rebalance_torch.data import load_splits
    from rebalance_torch.evaluate import encode_split
    from rebalance_torch.trainer import train

    out_dir = Path(out_dir)
    result: dict = {"tau": [float(x) for x in taus], "steps": [], "gap": [], "final": []}
    splits = None
    for tau in taus:
        cfg = config.replace(stage2_steps=0, eval_every=segment, select_on="last",
                             model_overrides={**config.model_overrides, "temp_init": float(tau)},
                             tau_clamp=[float(tau), float(tau) * (1 + TAU_PIN)])
        run_dir = out_dir / f"tau-{tau:g}"
        steps, gaps = [], []
        done = 0
        while done < cfg.stage1_steps:
            train(cfg, run_dir, stages=(1,), resume=done > 0, progress=False, log=lambda _m: None,
                  stop_after=segment, evaluate_test=False)
            done = min(cfg.stage1_steps, done + segment)
            student, _, tokenizer = load_student(run_dir, which="last")
            splits = splits or load_splits(cfg)
            emb = encode_split(student, splits["val"], tokenizer, keep_tokens=False)
            steps.append(done)
            gaps.append(modality_gap(emb.v, emb.t))
        log(f"τ = {tau:g}: gap {gaps[0]:.3f} -> {gaps[-1]:.3f} over {done} steps")
        result["steps"] = steps
        result["gap"].append(gaps)
        result["final"].append(gap_of_student(student, splits["test"], tokenizer, taus=(float(tau),)))
    return result


# --- figures ---------------------------------------------------------------------------------------------------

def plot_shift(curve: dict, path, title: str = "shift experiment") -> Path:
    """Loss vs the signed gap after shifting, one line per temperature, each as its change relative to its value at
    the original gap in percent (so the curves share an axis); the original gap and each minimum marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    at_original = int(np.argmin(np.abs(curve["lam"])))
    for i, tau in enumerate(curve["tau"]):
        change = 100.0 * (curve["loss"][i] / curve["loss"][i][at_original] - 1.0)
        ax.plot(curve["gap"], change, label=f"1/τ = {1 / tau:.0f}")
        low = int(np.argmin(change))
        ax.plot(curve["gap"][low], change[low], "k.", ms=6)
    ax.axvline(curve["original_gap"], color="grey", ls="--", lw=1, label="original gap")
    ax.axvline(0.0, color="grey", ls=":", lw=1)
    ax.set_xlabel("signed gap after shifting (‖Δ′‖, negative = centroids passed each other)")
    ax.set_ylabel("loss change vs the original gap (%)")
    ax.set_title(title + " (dots: minima)")
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def plot_cone(depth_curves: dict[str, np.ndarray], student: dict | None, path) -> Path:
    """Mean cosine vs depth of random MLPs (one line per activation), and the student's at init as points."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if student else 1, figsize=(10 if student else 5, 3.8), squeeze=False)
    ax = axes[0, 0]
    for name, curve in depth_curves.items():
        ax.plot(np.arange(len(curve)), curve, marker=".", label=name)
    ax.set_xlabel("layer")
    ax.set_ylabel("mean pairwise cosine")
    ax.set_title("random MLP at init: the cone")
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    if student:
        ax = axes[0, 1]
        x = np.arange(len(student["seed"]))
        ax.bar(x - 0.2, student["mean_cosine_image"], 0.4, label="images (v)")
        ax.bar(x + 0.2, student["mean_cosine_text"], 0.4, label="captions (t)")
        ax.set_xticks(x, [f"seed {s}\ngap {g:.2f}" for s, g in zip(student["seed"], student["modality_gap"],
                                                                   strict=True)])
        ax.set_ylabel("mean pairwise cosine")
        ax.set_title("the student at init (test split)")
        ax.set_ylim(0, 1.3)
        ax.legend(ncol=2, loc="upper center")
    return save_figure(fig, path)


def plot_tau_sweep(sweep: dict, path) -> Path:
    """The gap over training at each pinned τ, and each end point's shift curve at its own τ."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for tau, gaps, final in zip(sweep["tau"], sweep["gap"], sweep["final"], strict=True):
        axes[0].plot(sweep["steps"], gaps, marker=".", label=f"τ = {tau:g}")
        curve = final["shift"]
        at_original = int(np.argmin(np.abs(curve["lam"])))
        change = 100.0 * (curve["loss"][0] / curve["loss"][0][at_original] - 1.0)  # at the run's own τ
        axes[1].plot(curve["gap"], change, label=f"τ = {tau:g}")
        low = int(np.argmin(change))
        axes[1].plot(curve["gap"][low], change[low], "k.", ms=6)
    axes[0].set_xlabel("stage-1 step")
    axes[0].set_ylabel("modality gap (val)")
    axes[0].set_title("gap over training, τ pinned")
    axes[0].legend()
    axes[1].axvline(0.0, color="grey", ls=":", lw=1)
    axes[1].set_xlabel("signed gap after shifting")
    axes[1].set_ylabel("loss change vs the learned gap (%)")
    axes[1].set_title("end point: shift curve at the run's own τ (dots: minima)")
    axes[1].legend()
    return save_figure(fig, path)
