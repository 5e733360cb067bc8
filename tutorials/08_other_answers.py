# %% [markdown]
# # Tutorial 08 — Other answers to modal imbalance: GCL, m²-Mix, Mind the Gap
#
# **Run it:** `python tutorials/08_other_answers.py` (a few minutes on one thread: it trains a small stage 1 and
# three short stage-2 runs). Fast mode, `REBALANCE_FAST=1`, trains for a few dozen steps on a smaller world (the
# numbers are then only a smoke test; the code path is the same). Figures go to `tutorials/out/08_other_answers/`
# (or `$REBALANCE_TUTORIAL_OUT/08_other_answers/`).
#
# The paper answers modal imbalance by distilling two single-modality teachers. The field has other answers; this
# tutorial builds three of them on the same bench, each as a formula you can check by hand and an option of the
# trainer you can switch on by name in the weights:
#
# 1. **GCL** (generalized contrastive learning): a fused image+text embedding and one contrastive loss over the
#    keys of all three modalities, so that every query modality learns to find every key modality — measured by
#    the *universal retrieval grid* (i, t, it → i, t, it);
# 2. **m²-Mix** (geodesic multi-modal mixup): hard negatives made by walking the great circle from an image to its
#    caption; measured by alignment and uniformity of both modalities;
# 3. **Mind the Gap**: why image and text embeddings sit in two separate cones (the cone effect at initialisation),
#    and what the contrastive loss says when you shift them toward each other (the shift experiment).
#
# Pages: `docs/gcl.md`, `docs/mixup.md`, `docs/gap.md`.

# %%
import numpy as np
import torch
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance import gap as gap_app
from rebalance.report import train_and_report
from rebalance_ref import gap, gcl, mixup
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.threads import set_threads
from rebalance_ref.tolerances import FD_REL_TOL, ORACLE_RTOL, PARITY64_ATOL, PARITY64_RTOL, SLERP_MIN_ANGLE
from rebalance_torch import gcl as gcl_torch
from rebalance_torch import mixup as mixup_torch
from rebalance_torch.checkpoint import checkpoint_path
from rebalance_torch.config import BASELINE_WEIGHTS, TrainConfig
from rebalance_torch.evaluate import UNIVERSAL_MODALITIES
from rebalance_torch.prepare import prepare

set_threads(1)
OUT = out_dir("08_other_answers")
np.set_printoptions(precision=3, suppress=True)
print(f"fast mode: {FAST}; figures and run folders in {OUT}")

# %% [markdown]
# ## 1. GCL: one softmax over three modalities
#
# Take the raw projections `f_I`, `f_T` (before normalisation). The fused embedding is `e = n(f_I + f_T)`: the
# raw vectors are summed first, so the longer one weighs more. The keys are all 3B embeddings `[v; t; e]`; for
# every anchor modality a and every *other* modality b, the pair's b-embedding is the positive and everything else
# is a negative — except the anchor itself, which is masked (it would add a constant `exp(1/τ)`). We write it as a
# loop first, then compare with `rebalance_ref.gcl.gcl` and its torch mirror.

# %%
banner("1. GCL by hand")
rng = np.random.default_rng(0)
image, text = rng.standard_normal((5, 4)), rng.standard_normal((5, 4))
tau = 0.2
unit = {"i": image / np.linalg.norm(image, axis=1, keepdims=True),
        "t": text / np.linalg.norm(text, axis=1, keepdims=True)}
unit["it"] = (image + text) / np.linalg.norm(image + text, axis=1, keepdims=True)
by_hand = 0.0
for a, b in gcl.GCL_PAIRS["all"]:
    for j in range(5):
        keys = [(m, k) for m in gcl.MODALITIES for k in range(5) if (m, k) != (a, j)]  # the anchor masked
        denominator = sum(np.exp(unit[a][j] @ unit[m][k] / tau) for m, k in keys)
        by_hand -= np.log(np.exp(unit[a][j] @ unit[b][j] / tau) / denominator)
by_hand /= 6 * 5
value, grads = gcl.gcl(image, text, tau)
print(f"by hand {by_hand:.6f}   rebalance_ref.gcl.gcl {value:.6f}")
assert abs(value - by_hand) <= ORACLE_RTOL * abs(by_hand)
errors = gradient_errors(gcl.gcl, {"image": image, "text": text, "tau": tau}, seed=1)
print("analytic vs finite differences (relative):", {k: f"{e:.1e}" for k, e in errors.items()})
assert max(errors.values()) <= FD_REL_TOL
tensors = [torch.tensor(x, requires_grad=True) for x in (image, text)]
gcl_torch.gcl(*tensors, tau).backward()
assert np.allclose(tensors[0].grad.numpy(), grads["image"], rtol=PARITY64_RTOL, atol=PARITY64_ATOL)
print("torch autograd agrees with the hand-derived backward")

# %% [markdown]
# ## 2. m²-Mix: the great circle between an image and its caption
#
# `slerp(a, b, λ)` walks the sphere from `n(b)` (λ = 0) to `n(a)` (λ = 1) at constant speed; the straight line
# between them (lerp) cuts through the ball and must be renormalised, which bunches its points near the middle.
# Below a tiny angle the slerp formula is 0/0: the package switches to the normalised lerp there (equal up to
# O(θ²)), and its backward stays finite even for identical rows.

# %%
banner("2. slerp")
a2, b2 = np.array([[1.0, 0.0]]), np.array([[np.cos(2.6), np.sin(2.6)]])
lams = np.linspace(0, 1, 11)
geodesic = np.concatenate([mixup.slerp(a2, b2, lam)[0] for lam in lams])
straight = np.stack([(lam * a2 + (1 - lam) * b2)[0] for lam in lams])
renormed = straight / np.linalg.norm(straight, axis=1, keepdims=True)
angles = np.arctan2(geodesic[:, 1], geodesic[:, 0])
print("slerp steps (rad):", np.diff(angles))  # all equal: constant speed
same = torch.tensor(rng.standard_normal((3, 4)), requires_grad=True)
mixup_torch.slerp(same, same.detach().clone(), 0.3).sum().backward()
print("gradient at identical rows finite:", bool(torch.isfinite(same.grad).all()),
      f"(lerp below θ = {SLERP_MIN_ANGLE:g} rad)")
fig, ax = plt.subplots(figsize=(4.2, 4.2))
circle = np.linspace(0, 2 * np.pi, 200)
ax.plot(np.cos(circle), np.sin(circle), color="lightgrey")
ax.plot(straight[:, 0], straight[:, 1], "o-", color="tab:orange", ms=3, label="lerp (straight)")
ax.plot(renormed[:, 0], renormed[:, 1], "s", color="tab:red", ms=3, label="lerp, renormalised")
ax.plot(geodesic[:, 0], geodesic[:, 1], "o", color="tab:blue", ms=4, label="slerp (geodesic)")
ax.annotate("image n(a)", a2[0], textcoords="offset points", xytext=(5, 5))
ax.annotate("caption n(b)", b2[0], textcoords="offset points", xytext=(-30, 8))
ax.set_aspect("equal")
ax.legend(fontsize=7, loc="lower left")
ax.set_title("mixing an image and its caption, λ = 0, 0.1, …, 1")
save_figure(fig, OUT, "slerp_path.png")

# %% [markdown]
# ## 3. Three stage-2 runs from one stage 1
#
# A small text-poor run: stage 1 (ITC + 2·ITM), then from its best checkpoint three stage-2 runs of the same
# length: the compute-matched baseline (ITC + 2·ITM), **GCL** in place of ITC (`gcl=1, itm=2`) and **m²-Mix**
# added to the baseline (`itc=1, itm=2, m2mix=0.5`). No teachers are needed. Each run's evaluation holds the
# universal grid (`uni_*` keys) and the m²-Mix geometry (`alignment_relative`, `uniformity_joint`).

# %%
banner("3. training")
config = TrainConfig(preset="text-poor", n_train=150 if FAST else 600, n_val=30 if FAST else 100,
                     n_test=60 if FAST else 200, stage1_steps=30 if FAST else 300, stage2_steps=15 if FAST else 150,
                     batch_size=32, eval_every=1000 if FAST else 50, weights=dict(BASELINE_WEIGHTS), seed=0)
RUN = OUT / "runs"
prepared = prepare(config, teachers=False)
train_and_report(config, RUN / "stage1", prepared=prepared, stages=(1,), progress=False, evaluate_test=False)
init = checkpoint_path(RUN / "stage1", 1, "best")
methods = {"baseline (ITC+ITM)": dict(BASELINE_WEIGHTS), "GCL": {"gcl": 1.0, "itm": 2.0},
           "m²-Mix": {**BASELINE_WEIGHTS, "m2mix": 0.5}}
results = {}
for i, (name, weights) in enumerate(methods.items()):
    summary = train_and_report(config.replace(weights=weights), RUN / f"stage2-{i}", prepared=prepared, init=init,
                               stages=(2,), progress=False)
    results[name] = summary["test"]
    r = results[name]
    print(f"{name:20s} R-mean {r['cos_r_mean']:5.1f}  universal R-mean {r['uni_r_mean']:5.1f}  gap "
          f"{r['modality_gap']:.2f}  alignment(rel) {r['alignment_relative']:+.3f}  uniformity(joint) "
          f"{r['uniformity_joint']:.3f}")

# %% [markdown]
# ### The universal grid
#
# Rows: the query modality (an image, its first caption, or their fusion); columns: the key modality (an image,
# its *second* caption, or the fusion of the image with that second caption). Each cell is R-mean over R@1/5/10
# for finding the query's own item; i→i would find itself, so its cell shows attribute NDCG@10 instead
# (`docs/gcl.md`). Plain contrastive training only ever learns the i↔t cells; GCL trains all six off-diagonal
# pairs of modalities.

# %%
def grid(r):
    cells = np.zeros((3, 3))
    for row, q in enumerate(UNIVERSAL_MODALITIES):
        for col, k in enumerate(UNIVERSAL_MODALITIES):
            if (q, k) == ("i", "i"):
                cells[row, col] = r[f"uni_attr_{q}2{k}@10"]
            else:
                cells[row, col] = np.mean([r[f"uni_{q}2{k}_r{n}"] for n in (1, 5, 10)])
    return cells


fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6))
for ax, (name, r) in zip(axes, results.items(), strict=True):
    cells = grid(r)
    ax.imshow(cells, vmin=0, vmax=100, cmap="viridis")
    for row in range(3):
        for col in range(3):
            ax.text(col, row, f"{cells[row, col]:.0f}" + ("*" if row == col == 0 else ""), ha="center",
                    va="center", color="white" if cells[row, col] < 60 else "black")
    ax.set_xticks(range(3), [f"key {k}" for k in UNIVERSAL_MODALITIES])
    ax.set_yticks(range(3), [f"query {q}" for q in UNIVERSAL_MODALITIES])
    ax.set_title(f"{name}\nuniversal R-mean {r['uni_r_mean']:.1f}", fontsize=9)
fig.suptitle("universal retrieval (R-mean, %; * attribute NDCG@10)", fontsize=10, y=1.06)
save_figure(fig, OUT, "universal_grid.png")

# %% [markdown]
# ### Geometry: gap, alignment, uniformity
#
# The gap is ‖mean v − mean t‖. Alignment as m²-Mix measures it is the mean of ‖t − v_own‖² − min over other
# images ‖t − v_j‖² (negative: every caption nearer its own image than any other); joint uniformity is the
# uniformity of images and captions together. Read it with the gap: two tight cones far apart already look
# "spread" to it, so closing the gap can *raise* joint uniformity unless each modality also spreads out.

# %%
keys = [("modality_gap", "gap ‖Δ‖"), ("alignment_relative", "alignment (relative)"),
        ("uniformity_image", "uniformity, images"), ("uniformity_text", "uniformity, captions"),
        ("uniformity_joint", "uniformity, both")]
fig, axes = plt.subplots(1, len(keys), figsize=(3 * len(keys), 3))
for ax, (key, label) in zip(axes, keys, strict=True):
    ax.bar(range(len(results)), [r[key] for r in results.values()], color=["grey", "tab:green", "tab:blue"])
    ax.set_xticks(range(len(results)), [n.split(" ")[0] for n in results], fontsize=8)
    ax.set_title(label, fontsize=9)
fig.suptitle("lower is better in every panel", fontsize=9, y=1.06)
save_figure(fig, OUT, "geometry.png")

# %% [markdown]
# ## 4. Mind the Gap: the cone, and the shift experiment
#
# **The cone.** Push random points through a randomly initialised ReLU MLP and their mean pairwise cosine climbs
# toward 1 with depth: every network maps its inputs into a narrow cone, and each random init its own. Without
# the ReLU the cone does not form. Two towers, two inits, two cones: that is a modality gap before any training.
#
# **The shift.** Move images and captions toward each other along the gap vector Δ, renormalise, and compute the
# contrastive loss: `x' = n(x − λΔ/2)`, `y' = n(y + λΔ/2)`. Where is the loss lowest?

# %%
banner("4. Mind the Gap")
depth = 10 if FAST else 25
curves = {act: gap.random_mlp_cone(n_points=100, width=128 if FAST else 512, depth=depth, activation=act, seed=0)
          for act in ("relu", "linear")}
print("mean cosine by depth, relu:", curves["relu"][[0, 1, 5, -1]], " linear:", curves["linear"][[0, 1, 5, -1]])
student_init = gap_app.cone_at_init(config, seeds=(0, 1))
print("student at init: mean cosine images", np.round(student_init["mean_cosine_image"], 2), "captions",
      np.round(student_init["mean_cosine_text"], 2), "gap", np.round(student_init["modality_gap"], 2))
gap_app.plot_cone(curves, student_init, OUT / "cone.png")
print(f"wrote {OUT / 'cone.png'}")

trained = gap_app.run_gap(RUN / "stage2-0", taus=(0.01, 0.05, 0.1, 1.0), lams=np.arange(-2.0, 3.0, 0.25))
curve = trained["shift"]
print(f"baseline's gap ‖Δ‖ = {trained['modality_gap']:.3f}; loss minimum at signed gap:",
      {f"τ={t:g}": round(float(curve["gap"][int(np.argmin(curve["loss"][i]))]), 2)
       for i, t in enumerate(curve["tau"])})
gap_app.plot_shift(curve, OUT / "shift.png", title="shift experiment (baseline student, test split)")
print(f"wrote {OUT / 'shift.png'}")

# %% [markdown]
# What to read in the figures, and what our full-size runs found (`docs/gcl.md`, `docs/mixup.md`, `docs/gap.md`):
# GCL closes the modality gap almost completely and lifts the cells plain contrast never trains; m²-Mix's mixed
# negatives act on the same i↔t cells as ITC; and our own finding, that the paper's IIC/TTC *widen* the gap (each
# modality is pulled toward its own teacher), reads naturally in Mind the Gap's terms: nothing in the objective
# rewards closing the gap, so any term that moves one modality alone moves the centroids apart.
#
# ## Exercises
#
# 1. Switch GCL to its restricted case, `pairs="cross"`, in `rebalance_ref.gcl.gcl`: which terms of the hand loop
#    in section 1 disappear? Is the value then equal to ITC? (Hint: the denominator.)
# 2. Draw λ ~ Beta(β, β) for β = 0.2 and 0.5 (the two values the method uses) and plot the histograms: which β
#    makes harder negatives, and why?
# 3. Run the shift experiment on the GCL run (`RUN / "stage2-1"`): where is its loss minimum, and how does its
#    original gap compare with the baseline's?
# 4. In `gap.random_mlp_cone`, replace ReLU by tanh (edit a copy): does the cone still form?
