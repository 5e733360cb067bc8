# %% [markdown]
# # Tutorial 10 — Look inside the student: concept neurons (VL-SAE) and word-patch interactions (LOUPE)
#
# **Run it:** `python tutorials/10_look_inside.py` (a few minutes on one thread: it trains a small run first).
# Fast mode, `REBALANCE_FAST=1`, trains for a few dozen steps and probes with few samples — the code path is the
# same, the numbers are noise. Figures and the run folder go to `tutorials/out/10_look_inside/` (or
# `$REBALANCE_TUTORIAL_OUT/10_look_inside/`).
#
# Retrieval metrics say *how well* a student retrieves; the two probes here ask *what* its space holds. The shapes
# world keeps every scene's true attributes (shapes, colours, sizes, grid cells), so both probes can be scored
# against the truth — something no real-data study can do.
#
# 1. **A sparse autoencoder** (VL-SAE style, `rebalance_ref.sae`): one set of concept neurons shared by image and
#    text embeddings. Which neurons track which attribute, on the image side and on the text side?
# 2. **Shapley interactions** (LOUPE style, `rebalance_ref.interactions`) between caption words and image
#    patches: which words does the student ground where?
#
# On the command line: `rebalance probe sae --run RUN` and `rebalance probe interactions --run RUN`;
# `docs/probes.md` documents both and what they measured on the demo.

# %%
import shutil

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance import probes
from rebalance.report import train_and_report
from rebalance_ref import interactions, sae
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.threads import set_threads
from rebalance_ref.tolerances import FD_REL_TOL, KINKED_FD_STEP
from rebalance_torch.checkpoint import checkpoint_path
from rebalance_torch.config import BASELINE_WEIGHTS, TrainConfig
from rebalance_torch.prepare import prepare

set_threads(1)
OUT = out_dir("10_look_inside")
RUN = OUT / "run"
shutil.rmtree(RUN, ignore_errors=True)  # our own run folder from a previous execution
print(f"fast mode: {FAST}; figures and run folder in {OUT}")

# %% [markdown]
# ## 1. A run to look into
#
# As in tutorial 05: stage 1, then stage 2 twice from the same checkpoint — the compute-matched baseline
# (ITC + ITM, in `RUN/baseline`) and the full objective (in `RUN`). The text-poor world: captions mostly leave out
# where objects are and how big they are, so the image holds more than its captions.

# %%
banner("1. a small run")
config = TrainConfig(preset="text-poor", n_train=150 if FAST else 600, n_val=30 if FAST else 100,
                     n_test=60 if FAST else 300, teacher_epochs=1 if FAST else 3, stage1_steps=25 if FAST else 300,
                     stage2_steps=15 if FAST else 150, batch_size=32 if FAST else 64,
                     eval_every=1000 if FAST else 75, seed=0)
prepared = prepare(config, teachers=True, teacher_cache=RUN / "teachers")
train_and_report(config, RUN, prepared=prepared, stages=(1,), progress=False, evaluate_test=False)
train_and_report(config.replace(weights=dict(BASELINE_WEIGHTS)), RUN / "baseline", prepared=prepared,
                 init=checkpoint_path(RUN, 1, "best"), stages=(2,), progress=False)
train_and_report(config, RUN, prepared=prepared, stages=(2,), progress=False)
print("runs:", RUN.relative_to(OUT), "(full) and", (RUN / "baseline").relative_to(OUT))

# %% [markdown]
# ## 2. The autoencoder's pieces, by hand
#
# One shared encoder W (h rows) and two decoders (one per modality):
#
# `a_j(x) = 2 − ‖x̂ − ŵ_j‖` (x̂, ŵ_j unit vectors) — a neuron fires by how close x points to its direction;
# top-k keeps the k largest per row; `loss = MSE(D_V(a(v)), v) + MSE(D_T(a(t)), t)` with `D(a) = a W_D + b`.
#
# Because ‖x̂ − ŵ‖² = 2 − 2 cos, the activation is `2 − sqrt(2 − 2 cos)`: we check that by hand, and the
# reference's analytic gradients against finite differences (top-k is piecewise, so the check runs at a point
# where no row has a tie at its k-th activation).

# %%
banner("2. the formula by hand")
rng = np.random.default_rng(0)
x, w = rng.standard_normal((3, 4)), rng.standard_normal((6, 4))
a, _ = sae.sae_activations(x, w, 2)
xu, wu = x / np.linalg.norm(x, axis=1, keepdims=True), w / np.linalg.norm(w, axis=1, keepdims=True)
dense = 2 - np.sqrt(2 - 2 * xu @ wu.T)
by_hand = np.where(dense >= np.sort(dense, axis=1)[:, [-2]], dense, 0.0)
print("activations (k=2 of h=6):\n", np.round(a, 3))
assert np.allclose(a, by_hand)
inputs = {"v": x, "t": x + 0.3 * rng.standard_normal((3, 4)), "w_enc": w, "w_dec_v": rng.standard_normal((6, 4)),
          "b_dec_v": np.zeros(4), "w_dec_t": rng.standard_normal((6, 4)), "b_dec_t": np.zeros(4), "k": 2}
errors = gradient_errors(sae.sae_loss, inputs, step=KINKED_FD_STEP)
print("relative gradient errors vs finite differences:", {k: f"{e:.1e}" for k, e in errors.items()})
assert max(errors.values()) <= FD_REL_TOL

# %% [markdown]
# ## 3. Concept neurons of the full run
#
# `probes.sae_probe` encodes the test split with the run's best student, fits the autoencoder (the method's
# sizes: h = 8d neurons, k = d/2 active) on the pairs of the even-numbered test images, and scores the
# odd-numbered ones: for each neuron and each attribute value (6 shapes, 7 colours, 2 sizes, 9 cells), the AUROC
# of the neuron's activation as a detector of that value — on images, and separately on captions (against their
# image's attributes). 0.5 is chance; a neuron that never fires scores exactly 0.5.

# %%
banner("3. SAE on the full run")
settings = probes.SaeSettings(steps=60 if FAST else 300)
full = probes.sae_probe(RUN, settings)
base = probes.sae_probe(RUN / "baseline", settings)
print(f"loss {full.loss[0]:.5f} -> {np.mean(full.loss[-10:]):.5f} in {settings.steps} steps")
probes.plot_sae(full, OUT / "sae_full.png", title="VL-SAE concepts, full objective")
summary = probes.sae_summary(full)
print(f"neurons firing for images {summary['fire_image']}, for captions {summary['fire_text']}, "
      f"for both {summary['fire_both']}")
for group, g in summary["per_group"].items():
    print(f"  {group:7s} best-neuron AUROC: image {g['image']:.3f}  text {g['text']:.3f}")

# %% [markdown]
# Read `sae_full.png` from left to right: the neurons that detect an attribute best on images (with the same
# attribute's AUROC on captions beside it), then per attribute value the best neuron on each side, then which
# attribute groups the image-only and the caption neurons track.
#
# Two things to look for. First, **how many neurons fire for both modalities**. The activation depends only on the
# direction of an embedding, and a student's image and caption embeddings sit in two separate cones (the
# *modality gap*, `modality_gap` in every evaluation): when the gap is large, no direction is close to both, and
# every neuron ends up image-only or caption-only. Second, **which attributes the text side lacks**: under
# text-poor captions, cells and sizes are rarely said, so the caption embeddings cannot hold them — their best
# text AUROC stays near 0.5 while the image side's is higher.

# %%
banner("3b. baseline vs full")
probes.plot_sae_compare({"baseline": base, "full": full}, OUT / "sae_compare.png")
for name, probe in (("baseline", base), ("full", full)):
    s = probes.sae_summary(probe)
    print(name, {g: (round(v["image"], 3), round(v["text"], 3)) for g, v in s["per_group"].items()},
          "shared neurons:", s["fire_both"])

# %% [markdown]
# ## 4. Shapley interactions on a game we can solve
#
# A *unanimity game* u_T pays 1 when every player of T is present. Its Shapley values are 1/|T| for the players
# of T, and the Shapley interaction of two of them is 1/(|T| − 1). A sum of such games has sums of those
# answers — so we can check `interaction_exact` (all 2^n coalitions) and the permutation-sampling estimator
# (`interaction_samples`, with a standard error) against the truth.

# %%
banner("4. a game with a known answer")
game = interactions.unanimity_game({(0, 1): 2.0, (0, 2, 3): 3.0, (4,): 1.0})
pairs = [(0, 1), (0, 2), (2, 3), (1, 4)]
truth = [2.0, 1.5, 1.5, 0.0]
exact = interactions.interaction_exact(game, 5, pairs)
est = interactions.interaction_samples(game, 5, pairs, samples=100 if FAST else 1000, seed=0)
for p, t, e, m, se in zip(pairs, truth, exact, est.mean, est.stderr, strict=True):
    print(f"pair {p}: closed form {t:.3f}  exact {e:.3f}  sampled {m:.3f} ± {se:.3f}")
assert np.allclose(exact, truth)

# %% [markdown]
# ## 5. Which words does the student ground where?
#
# Players: the caption's words and the 16 image patches. The score: the cosine of the student's image and text
# embeddings with only a coalition present — an absent word is masked out of attention, an absent patch's token
# is replaced by the mean token right after the image encoder's stem (docs/probes.md says why, and why not the
# ITM logit). For each (word, patch) pair, `samples` random orders, 4 evaluations each, a standard error.
#
# The check: a colour or shape word that names exactly one object of its scene should interact most with a patch
# of that object (the object's grid cell gives its patches). The rate is compared with the rate for a random
# cell's patches.

# %%
banner("5. interactions")
ix = probes.interaction_probe(RUN, probes.InteractionSettings(pairs=3 if FAST else 8, samples=4 if FAST else 16))
probes.plot_interactions(ix, OUT / "interactions_full.png")
c = ix["check"]
print(f"{c['hit_rate']:.0%} of {c['words']} colour/shape words peak on their object "
      f"(random cell {c['random_region_rate']:.0%}); mean interaction inside the object {c['mean_inside_object']:+.4f}"
      f" vs a random cell {c['mean_inside_random_region']:+.4f}; median standard error {ix['median_stderr']:.5f}")
pair = ix["pairs"][0]
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.imshow(pair.interactions, cmap="RdBu_r", vmin=-np.abs(pair.interactions).max(),
          vmax=np.abs(pair.interactions).max())
ax.set_yticks(range(len(pair.words)), pair.words)
ax.set_xlabel("patch (row-major, 4 x 4)")
ax.set_title(f'"{pair.caption}": interaction of each word with each patch', fontsize=8)
save_figure(fig, OUT, "word_patch_matrix.png")

# %% [markdown]
# On the demo (docs/probes.md) about four in five colour and shape words peak on their own object's patches,
# against about one in four for a random cell — the student grounds the words its captions do say. Words its
# captions rarely say (where, how big) have no grounding to show; the SAE's text side said the same thing from
# the other direction.
#
# ## Exercises
#
# 1. Rerun section 5 with `reward="itm"`. How much does the ITM logit change between the full coalition and
#    the empty one? What does that say about explaining it?
# 2. Fit the SAE with `k=8` instead of d/2. Do the best AUROCs go up or down, and why does a neuron that fires
#    on few rows have a bounded AUROC?
# 3. Increase `samples` four-fold. Does the median standard error halve? Does the grounding rate change?
# 4. Centre each modality (subtract its mean embedding) before `probes.fit_sae`. Do neurons start to fire for
#    both images and captions? What does that tell you about the modality gap?
# 5. Probe a run trained on `preset="balanced"`. Which attributes does the text side gain?
