# %% [markdown]
# # Tutorial 04 — Stage 1: the baseline student (ITC + ITM)
#
# **Run it:** `python tutorials/04_baseline_student.py` (under a minute on one thread: 200 training steps).
# Fast mode, `REBALANCE_FAST=1`, trains for 30 steps only — the code path is the same but the student is barely
# trained, so read its numbers as a smoke test, not a result. Figures and the run folder go to
# `tutorials/out/04_baseline_student/` (or `$REBALANCE_TUTORIAL_OUT/04_baseline_student/`).
#
# Before any distillation, the student learns the usual way: **stage 1** trains an image tower, a text tower
# and a fusion encoder with `ITC + 2·ITM` (tutorial 02). As the paper's student starts from an ImageNet-trained
# image backbone, ours starts from an image tower pre-trained on images alone (the scenes' labels, a few seconds;
# `image_pretrain`); the text tower and the fusion start random. This tutorial
#
# 1. sets up a run with `TrainConfig` (the one config object) and `prepare` (data and tokenizer);
# 2. trains stage 1 with `rebalance_torch.trainer.train` and reads its traces from `metrics.jsonl`;
# 3. evaluates the best checkpoint (tutorial 06's protocol): cross-modal recall by cosine and with ITM
#    re-ranking, single-modal and mixed NDCG;
# 4. compares those with the same student *before* training, to see what matching pairs does — and does not
#    do — to the structure inside each modality.
#
# The same run on the command line: `rebalance train --out RUN --preset text-poor --stage1-steps 200
# --stage2-steps 0 ...` (see `rebalance train --help`); `docs/training.md` describes the trainer in full.

# %%
import json
import shutil

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance.report import train_and_report
from rebalance_ref.threads import set_threads
from rebalance_torch.config import TrainConfig
from rebalance_torch.evaluate import evaluate_student
from rebalance_torch.prepare import build_student, prepare
from rebalance_torch.runlog import read_metrics

set_threads(1)
OUT = out_dir("04_baseline_student")
RUN = OUT / "run"
shutil.rmtree(RUN, ignore_errors=True)  # a run folder refuses to be overwritten; this one is ours to replace
print(f"fast mode: {FAST}; figures and run folder in {OUT}")

# %% [markdown]
# ## 1. The run's config and data
#
# `TrainConfig` holds everything: data (the "text-poor" shapes world of tutorial 03), the model preset, both
# stages' steps and loss weights, evaluation and the seed. A bad value fails when the config is made, naming the
# field. We keep it small: a few hundred scenes and stage 1 only (`stage2_steps=0`).

# %%
banner("1. config")
config = TrainConfig(
    preset="text-poor",
    n_train=200 if FAST else 600,
    n_val=30 if FAST else 80,
    n_test=60 if FAST else 150,
    stage1_steps=30 if FAST else 200,
    stage2_steps=0,
    batch_size=32,
    eval_every=1000 if FAST else 100,  # fast: validate only at the end
    seed=0,
)
print("stage-1 loss weights:", config.stage1_weights)
print({k: getattr(config, k) for k in ("preset", "n_train", "n_test", "model", "stage1_steps", "batch_size", "k_test")})
try:
    TrainConfig(batch_size=1)
except ValueError as err:
    print("a bad config fails early:", err)

prepared = prepare(config, teachers=False)  # splits, tokenizer, training tensors (no teachers in stage 1)
test = prepared.splits["test"]
print("a test caption and its tokens:", test.captions[0][0], prepared.tokenizer.encode([test.captions[0][0]])[0])

# %% [markdown]
# ## 2. Train stage 1
#
# `train_and_report(config, run_dir, stages=(1,))` calls the trainer (`rebalance_torch.trainer.train`), which first
# pre-trains the image tower (its record is `pretrain.json`), then runs AdamW with warm-up and linear decay, logs
# every loss term and the temperature τ to `metrics.jsonl`, evaluates cosine R-mean on the validation split every
# `eval_every` steps, keeps the best checkpoint by that criterion (never by the test split), and evaluates the best
# checkpoint on the test split at the end; then it writes the run's `report.md` and `plots/`. Every step is seeded,
# so the same config gives the same run.

# %%
banner("2. train stage 1")
summary = train_and_report(config, RUN, prepared=prepared, stages=(1,), progress=False)
print(f"image tower pre-training ({config.image_pretrain}, {config.image_pretrain_epochs} epochs) took "
      f"{summary['timings']['pretrain']:.1f} s, stage 1 {summary['timings']['stage1']:.1f} s; files:",
      sorted(p.name for p in RUN.iterdir()))

rows = read_metrics(RUN)
steps = [r for r in rows if "itc" in r]
vals = [r for r in rows if "val" in r]
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
axes[0].plot([r["step"] for r in steps], [r["itc"] for r in steps], label="ITC")
axes[0].plot([r["step"] for r in steps], [r["itm"] for r in steps], label="ITM")
axes[0].set_xlabel("step")
axes[0].set_title("training losses")
axes[0].legend(fontsize=8)
axes[1].plot([r["step"] for r in steps], [r["tau"] for r in steps])
axes[1].set_xlabel("step")
axes[1].set_title("temperature τ (learnable)")
axes[2].plot([r["step"] for r in vals], [r["val"]["cos_r_mean"] for r in vals], marker="o")
axes[2].set_xlabel("step")
axes[2].set_title("validation R-mean (cosine)")
save_figure(fig, OUT, "stage1_traces.png")
print(f"ITC {steps[0]['itc']:.2f} -> {steps[-1]['itc']:.2f}; ITM {steps[0]['itm']:.2f} -> {steps[-1]['itm']:.2f}")

# %% [markdown]
# ## 3. Evaluate: cross-modal recall, two scorings
#
# `summary["test"]` (also in `eval.json`) holds every metric of tutorial 06 for the best checkpoint: `cos_*` is
# recall by embedding cosine (what a dual-encoder index serves, tutorial 07), `itm_*` the paper's re-ranking of
# the top `k_test` by the ITM head. On a test split of N images a random ranking has R@K ≈ K/N·100 in both
# directions (i2t: any of 5 captions among 5N within the top K).
#
# Read the ITM loss before trusting the re-ranking. Each batch holds B positives and 2B sampled negatives, so a
# head that ignores its input and always predicts "1 in 3 pairs match" scores the entropy H(1/3) ≈ 0.6365. An
# ITM loss sitting there means the head has learnt only the base rate, and its re-ranking is noise.

# %%
banner("3. cross-modal recall")
trained = summary["test"]
print(f"{'':8s}{'i2t R@1':>9s}{'R@5':>7s}{'R@10':>7s}{'t2i R@1':>9s}{'R@5':>7s}{'R@10':>7s}{'R-mean':>8s}")
for scoring in ("cos", "itm"):
    r = trained
    print(f"{scoring:8s}{r[f'{scoring}_i2t_r1']:9.1f}{r[f'{scoring}_i2t_r5']:7.1f}{r[f'{scoring}_i2t_r10']:7.1f}"
          f"{r[f'{scoring}_t2i_r1']:9.1f}{r[f'{scoring}_t2i_r5']:7.1f}{r[f'{scoring}_t2i_r10']:7.1f}"
          f"{r[f'{scoring}_r_mean']:8.1f}")
chance = 100 * np.mean([k / config.n_test for k in (1, 5, 10)])  # R@K of a random ranking is about K/N
print(f"R-mean of a random ranking: about {chance:.1f}")
assert json.loads((RUN / "eval.json").read_text()) == trained
base_rate = -(np.log(1 / 3) / 3 + np.log(2 / 3) * 2 / 3)
print(f"final ITM loss {steps[-1]['itm']:.4f} vs the base-rate entropy H(1/3) = {base_rate:.4f}: "
      + ("the head has learnt little beyond the base rate" if steps[-1]["itm"] > base_rate - 0.01
         else "the head has learnt more than the base rate"))

# %% [markdown]
# ## 4. Cross-modal vs single-modal: what did stage 1 change?
#
# Evaluate the *untrained* student (the same architecture and seed, step 0, before the tower's pre-training too)
# with the same function, and compare.
# Cross-modal recall starts at chance and rises: that is what ITC and ITM optimise. Single-modal retrieval
# (I2I, T2T) and mixed retrieval are *not* optimised directly; whatever structure each modality has after stage
# 1 is a by-product of matching pairs, and it can move either way. An untrained network is not structureless
# either: random convolutions already rank images by pixel similarity, and a random text tower by shared words.
# The modality gap and alignment show how far the two modalities sit apart.
#
# The clearest single-modal change in our runs is T2T with ROUGE relevance, which falls by more than ten
# points: a text tower trained only to match images stops ranking captions by their wording. That loss of
# single-modal structure is what the paper sets out to repair. The other single-modal and mixed numbers move by a
# point or two either way, within what another seed would give (exercise 5).

# %%
banner("4. before vs after stage 1")
untrained = evaluate_student(build_student(config, prepared.tokenizer), test, prepared.tokenizer,
                             relevance=prepared.relevance("test"), k_test=config.k_test)
KEYS = [("cos_r_mean", "R-mean (cosine)"), ("itm_r_mean", "R-mean (ITM)"), ("attr_i2i@10", "I2I NDCG@10, attr"),
        ("rouge_i2i@10", "I2I NDCG@10, ROUGE"), ("attr_t2t@10", "T2T NDCG@10, attr"),
        ("rouge_t2t@10", "T2T NDCG@10, ROUGE"), ("attr_i2it@10", "I2IT NDCG@10, attr"),
        ("attr_t2it@10", "T2IT NDCG@10, attr"), ("modality_gap", "modality gap"), ("alignment", "alignment")]
print(f"{'metric':24s}{'untrained':>11s}{'stage 1':>9s}")
for key, label in KEYS:
    print(f"{label:24s}{untrained[key]:11.2f}{trained[key]:9.2f}")
if not FAST:
    assert trained["cos_r_mean"] > untrained["cos_r_mean"] + 5  # stage 1 learnt to match pairs

fig, ax = plt.subplots(figsize=(8, 3.4))
shown = [(k, label) for k, label in KEYS if k.endswith("@10") or k.endswith("r_mean")]
x = np.arange(len(shown))
ax.bar(x - 0.2, [untrained[k] for k, _ in shown], width=0.4, label="untrained")
ax.bar(x + 0.2, [trained[k] for k, _ in shown], width=0.4, label="stage 1")
ax.set_xticks(x, [label.replace(" NDCG@10", "\nNDCG@10") for _, label in shown], fontsize=7, rotation=30, ha="right")
ax.set_ylabel("x 100")
ax.set_title("stage 1 optimises cross-modal matching; single-modal structure is a by-product")
ax.legend(fontsize=8)
save_figure(fig, OUT, "before_after_stage1.png")

# %% [markdown]
# What to notice: cross-modal R-mean rises well above chance while the single-modal numbers move in both
# directions, because nothing in ITC or ITM asks for them. Stage 2 (tutorial 05) adds teachers whose
# single-modal structure is better (tutorial 03) and distils it. The run folder `run/` holds `report.md`,
# `plots/` and the checkpoints; `rebalance_torch.checkpoint.load_student(RUN)` loads the best student.

# %% [markdown]
# ## Exercises
#
# 1. Train on the "balanced" preset with the same steps. Which metrics change most against text-poor, and why
#    does I2I with attribute relevance care?
# 2. Set `stage1_weights={"itc": 1.0}` (no ITM). What happens to cosine recall, and to ITM re-ranked recall —
#    what does the untrained ITM head do to the ranking?
# 3. Lower `k_test` to 5 and evaluate again (`evaluate_student(..., k_test=5)`). Explain `itm_i2t_r10`
#    (tutorial 06, section 2).
# 4. Plot the validation R-mean against the training loss. Is the best validation step the last one?
# 5. Evaluate the untrained student twice with different `seed`s. How much do its "chance" numbers move? What
#    does that say about reading small differences between trained runs?
# 6. Train again with `image_pretrain="none"` (the tower starts random). Compare the recall, the ITM loss and
#    the search probe's shape column (`probe_p5_shape`) with this run's (docs/models.md measured it at full size).
