# %% [markdown]
# # Tutorial 09 — Two other answers to imbalance: momentum distillation (ALBEF) and experts (LIMoE)
#
# **Run it:** `python tutorials/09_momentum_and_experts.py` (a few minutes on one thread). Fast mode,
# `REBALANCE_FAST=1`, trains for a few dozen steps only — the code path is the same, the numbers are a smoke test.
# Figures go to `tutorials/out/09_momentum_and_experts/` (or `$REBALANCE_TUTORIAL_OUT/09_momentum_and_experts/`).
#
# The paper answers modal imbalance with teachers. Two other ideas from the field, both options of our trainer:
#
# 1. **Momentum distillation** (ALBEF): noisy captions make one-hot ITC targets wrong; a slowly moving (EMA) copy
#    of the student supplies softer pseudo-targets, mixed with the id labels, over a queue of past features.
#    We compute the targets by hand, then train stage 2 twice from one stage-1 checkpoint under `noisy-captions`.
# 2. **A mixture of experts** (LIMoE): routed MLPs in the towers, with entropy losses per modality so that each
#    token commits to few experts while each modality still spreads over several. Our towers are separate, so the
#    experts are *shared by the two towers* at the same depth: each expert sees image tokens and text tokens, and
#    we can count how each modality uses it under each imbalance preset.
#
# `docs/momentum.md` and `docs/experts.md` hold the formulas, our deviations and the measured results.

# %%
import json
import math
import shutil

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance_ref import experts as ref_experts
from rebalance_ref import momentum as ref_momentum
from rebalance_ref.shapes import PRESETS
from rebalance_ref.threads import set_threads
from rebalance_torch.checkpoint import load_student
from rebalance_torch.config import BASELINE_WEIGHTS, TrainConfig
from rebalance_torch.data import Collate, PairDataset
from rebalance_torch.moe import routing_counts
from rebalance_torch.prepare import prepare
from rebalance_torch.trainer import train

set_threads(1)
OUT = out_dir("09_momentum_and_experts")
print(f"fast mode: {FAST}; figures in {OUT}")

# %% [markdown]
# ## 1. Momentum targets by hand
#
# For a batch row i the keys are the momentum model's features: the batch's own, then the queue. The targets
# blend the momentum model's softmax over the keys with the id soft labels g (uniform over every key of the same
# image): `y = α q + (1 − α) g`. A queue slot not yet filled has id −1 and never counts as a positive.

# %%
banner("1. momentum targets")
rng = np.random.default_rng(0)
idx = np.array([3, 3, 5])                      # two captions of image 3 in the batch
key_idx = np.array([3, 3, 5, 5, 3, -1])        # the batch, then a queue: image 5, image 3, an empty slot
image_keys, text_keys = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
y, _ = ref_momentum.momentum_targets(image_keys, text_keys, 0.1, 0.4, idx, key_idx)
unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
s = unit(image_keys[:3]) @ unit(text_keys).T / 0.1
q = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
g = (idx[:, None] == key_idx[None, :]) / (idx[:, None] == key_idx[None, :]).sum(axis=1, keepdims=True)
assert np.allclose(y[0], 0.4 * q + 0.6 * g)
print("g (row 0, image 3):", g[0].round(3), "\ny (row 0):", y[0, 0].round(3))

# %% [markdown]
# ## 2. Stage 2 with and without momentum distillation, under noisy captions
#
# One stage-1 run, then stage 2 twice from its best checkpoint: the compute-matched baseline (ITC + 2·ITM) and
# the same with `itc_momentum` (EMA m, queue, α = 0.4 warmed up). Same steps, same batches.

# %%
banner("2. momentum distillation under noisy-captions")
base = TrainConfig(preset="noisy-captions", n_train=80 if FAST else 1000, n_val=30 if FAST else 200,
                   n_test=40 if FAST else 500, stage1_steps=12 if FAST else 500, stage2_steps=8 if FAST else 250,
                   eval_every=4 if FAST else 25, batch_size=32 if FAST else 64, k_test=8,
                   weights=dict(BASELINE_WEIGHTS), seed=0)
prepared = prepare(base, teachers=False, log=lambda m: None)
runs = {}
for name, config in (("itc+itm", base), ("itc (momentum)+itm", base.replace(itc_momentum=0.995))):
    folder = OUT / ("run-" + name.replace(" ", "").replace("(", "-").replace(")", "").replace("+", "_"))
    shutil.rmtree(folder, ignore_errors=True)
    first = OUT / "run-itc_itm" / "checkpoints" / "stage1-best.pt"
    stages = (1, 2) if not runs else (2,)
    summary = train(config, folder, prepared=prepared, stages=stages, init=None if not runs else first,
                    progress=False, log=lambda m: None)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    runs[name] = {"val": [(r["step"], r["val"]["cos_r_mean"]) for r in rows if r["stage"] == 2 and "val" in r],
                  "test": summary["test"]["cos_r_mean"]}
    print(f"{name:<20} test R-mean (cosine) {runs[name]['test']:.2f}")

fig, ax = plt.subplots(figsize=(5.5, 3.5))
for name, run in runs.items():
    steps, values = zip(*run["val"], strict=True)
    ax.plot(steps, values, marker="o", label=f"{name} (test {run['test']:.1f})")
ax.set_xlabel("stage-2 step")
ax.set_ylabel("validation R-mean (cosine)")
ax.set_title("noisy-captions: stage 2 from one stage-1 checkpoint")
ax.legend()
save_figure(fig, OUT, "momentum_vs_baseline.png")

# %% [markdown]
# ## 3. The entropy losses on toy routers
#
# Local entropy is small when each token is sure of its expert; the thresholded global entropy is zero once the
# modality's mean routing is as spread as `S` experts (threshold log S), and positive when it collapses.

# %%
banner("3. routing entropies")
confident_spread = np.log(np.eye(4)[np.arange(8) % 4] * 0.97 + 0.01)   # each token sure, experts all used
collapsed = np.log(np.eye(4)[np.zeros(8, dtype=int)] * 0.97 + 0.01)    # each token sure, all on expert 0
for label, z in (("confident, spread", confident_spread), ("confident, collapsed", collapsed)):
    local, _ = ref_experts.local_entropy(z)
    glob, _ = ref_experts.global_entropy(z, math.log(2))
    print(f"{label:<22} local {local:.3f}   global (S = 2) {glob:.3f}")
assert ref_experts.global_entropy(confident_spread, math.log(2))[0] == 0.0
assert ref_experts.global_entropy(collapsed, math.log(2))[0] > 0.3

# %% [markdown]
# ## 4. Expert use per modality under each preset
#
# A student with 8 experts in the last block of each tower (shared by the towers), top-1 routing, capacity 1.0,
# trained for stage 1 with the four auxiliaries. Then, on the validation split, we count which expert each token
# picks first: image tokens are the image tower's patch tokens, text tokens the text tower's real (not padding)
# tokens. LIMoE reports image-only, text-only and mixed experts; here is what our small run does.

# %%
banner("4. expert use per modality")
moe_weights = {"itc": 1.0, "itm": 2.0, "moe_importance": 0.005, "moe_load": 0.005, "moe_local": 0.01,
               "moe_global": 0.01}
use = {}
for preset in PRESETS:
    config = TrainConfig(preset=preset, n_train=60 if FAST else 600, n_val=30 if FAST else 100, n_test=30,
                         stage1_steps=6 if FAST else 300, stage2_steps=0, eval_every=1000, batch_size=32,
                         stage1_weights=moe_weights, model_overrides={"moe": {"experts": 8}}, seed=0)
    folder = OUT / f"moe-{preset}"
    shutil.rmtree(folder, ignore_errors=True)
    data = prepare(config, teachers=False, log=lambda m: None)
    train(config, folder, prepared=data, progress=False, log=lambda m: None, evaluate_test=False)
    student, _, tokenizer = load_student(folder, "last")
    val = PairDataset(data.splits["val"], tokenizer)
    batch = Collate()([val[i] for i in range(min(128, len(val)))])
    counts = routing_counts(student, batch.images, batch.ids, batch.mask)[0]
    use[preset] = {m: (c / c.sum()).numpy() for m, c in counts.items()}
    print(f"{preset:<15} image share per expert {use[preset]['image'].round(2)}  "
          f"text {use[preset]['text'].round(2)}")
    assert all(abs(float(v.sum()) - 1) < 1e-9 for v in use[preset].values())

fig, axes = plt.subplots(1, len(use), figsize=(3.2 * len(use), 3), sharey=True)
for ax, (preset, shares) in zip(axes, use.items(), strict=True):
    experts_axis = np.arange(len(shares["image"]))
    ax.bar(experts_axis - 0.2, shares["image"], width=0.4, label="image tokens")
    ax.bar(experts_axis + 0.2, shares["text"], width=0.4, label="text tokens")
    ax.set_title(preset)
    ax.set_xlabel("expert")
axes[0].set_ylabel("share of the modality's tokens")
axes[0].legend(fontsize=8)
fig.suptitle("First-choice expert per token, shared experts in the last tower block", y=1.04)
save_figure(fig, OUT, "expert_use.png")

# %% [markdown]
# ## Exercises
#
# 1. Train stage 2 with `itc_alpha=0` (queue and EMA keys, no pseudo-targets) and with a smaller `itc_momentum`
#    (0.9): which part of momentum distillation moves the result? `docs/momentum.md` reports our measurement.
# 2. Drop the entropy terms (`moe_local`, `moe_global` at weight 0) and count the expert use again: does routing
#    collapse onto a few experts, as LIMoE reports without them?
# 3. Set `"shared": False` in the `moe` option: each tower gets its own experts. What does "per modality" mean
#    then, and what does the figure of section 4 show?
# 4. Export the MoE student of section 4 with `exports.exporter.export.export_student` and verify it: at
#    evaluation no token is dropped, so the graph has no capacity to trace.
