# %% [markdown]
# # Tutorial 03 — Modal imbalance in the shapes world, and what the teachers know
#
# **Run it:** `python tutorials/03_modal_imbalance.py` (under a minute on one thread; trains two small teachers).
# Fast mode, `REBALANCE_FAST=1`, uses fewer scenes and teacher epochs (the teachers come out weaker; the code path
# is the same). Figures go to `tutorials/out/03_modal_imbalance/` (or `$REBALANCE_TUTORIAL_OUT/03_modal_imbalance/`).
#
# *Modal imbalance*: one modality carries less information than the other. Photos are noisy, captions terse.
# The paper's claim is that forcing every image–caption pair to match exactly then bends the shared space, and
# structure *within* each modality suffers first. To study that we need data where the imbalance can be dialled
# up and down and measured: the embedded **shapes world** (`rebalance_ref.shapes`, `docs/data.md`).
#
# 1. the world: scenes, their true attributes, captions;
# 2. the knobs and presets, on the very same scenes;
# 3. what each modality loses, measured;
# 4. trivial baselines for single-modal retrieval;
# 5. the two frozen teachers (`rebalance_torch.teachers`), and whether they beat the baselines — a teacher is
#    only useful where its structure is better than what the student could get on its own.

# %%
import textwrap

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance_ref.shapes import PRESETS, WorldKnobs, make_splits, make_world, position_phrases
from rebalance_ref.text import words

OUT = out_dir("03_modal_imbalance")
np.set_printoptions(precision=3, suppress=True)
N_SHOW = 200 if FAST else 600  # scenes for the measurements of section 3
print(f"fast mode: {FAST}; figures in {OUT}")

# %% [markdown]
# ## 1. The world
#
# A scene holds 1–3 objects; each has a shape (6), a colour (7), a size (2) and a cell of a 3×3 grid. The
# images are small RGB arrays (32×32 here); every scene gets 5 captions from varied templates and a canonical
# description that names everything. The true attributes stay with the data — the student never sees them, but
# evaluation and the supervised image teacher may.

# %%
banner("1. the world")
world = make_world(8, "balanced", seed=0, size=32)
print("images:", world.images.shape, world.images.dtype)
print("scene 0 attributes:", world.attributes[0])
print("canonical:", world.canonical[0])
print("captions:", *world.captions[0], sep="\n  ")

def wrap(caption):
    """A caption in at most three short lines, for a figure title."""
    return "\n".join(textwrap.wrap(caption, 36, max_lines=3, placeholder=" …"))


fig, axes = plt.subplots(2, 4, figsize=(10, 5.6))
for i, ax in enumerate(axes.ravel()):
    ax.imshow(world.images[i], interpolation="nearest")
    ax.set_title(wrap(world.captions[i][0]), fontsize=6.5)
    ax.axis("off")
save_figure(fig, OUT, "scenes.png")

# %% [markdown]
# ## 2. Knobs and presets
#
# `WorldKnobs` holds the imbalance knobs, each in [0, 1] and a no-op at 0. Text knobs make captions omit (or get
# wrong) what the image shows; image knobs degrade the pixels. The presets combine them. Every source of
# randomness has its own stream, so **the same seed gives the same scenes under every preset** — comparing
# presets isolates the knobs.

# %%
banner("2. presets")
for name, knobs in PRESETS.items():
    print(f"{name:15s}", {k: v for k, v in knobs.to_dict().items() if v} or "(all knobs 0)")

same = {name: make_world(4, name, seed=0, size=32) for name in PRESETS}
assert all(same[name].attributes == same["balanced"].attributes for name in PRESETS)  # the very same scenes

fig, axes = plt.subplots(len(PRESETS), 4, figsize=(10, 2.8 * len(PRESETS)))
for r, (name, data) in enumerate(same.items()):
    for c in range(4):
        ax = axes[r, c]
        ax.imshow(data.images[c], interpolation="nearest")
        ax.set_title(f"{name}\n" + wrap(data.captions[c][0]), fontsize=6.5)
        ax.axis("off")
save_figure(fig, OUT, "presets.png")

# A knob of your own: WorldKnobs(drop_colour=1.0) gives captions without colour words.
colourless = make_world(4, WorldKnobs(drop_colour=1.0), seed=0)
print("drop_colour=1:", colourless.captions[0][0])

# %% [markdown]
# ## 3. What each modality loses
#
# **Text.** Count how many captions name a position, a size and a colour, and how long they are. Under
# "text-poor" most captions no longer say *where* things are, or how big — the image holds strictly more than
# its captions. **Images.** Under "image-poor" the pixels change (noise, grey occluders, washed-out colour) while
# the captions stay complete; we measure the mean absolute pixel change against the clean images of the same
# scenes.

# %%
banner("3. what is lost")
POSITION_WORDS = {w for r in range(3) for c in range(3) for p in position_phrases(r, c) for w in p.split()}
POSITION_WORDS = (POSITION_WORDS - {"in", "the", "at", "on", "near"}) | {"above", "below"}
SIZE_WORDS = {"small", "little", "tiny", "large", "big"}
COLOUR_WORDS = {"red", "green", "blue", "yellow", "purple", "cyan", "orange"}

worlds = {name: make_world(N_SHOW, name, seed=1, size=32) for name in PRESETS}
content = {}
for name, data in worlds.items():
    caps = [set(words(c)) for caps in data.captions for c in caps]
    content[name] = {
        "position": np.mean([bool(c & POSITION_WORDS) for c in caps]),
        "size": np.mean([bool(c & SIZE_WORDS) for c in caps]),
        "colour": np.mean([bool(c & COLOUR_WORDS) for c in caps]),
        "words": np.mean([len(words(c)) for caps in data.captions for c in caps]),
        "pixel change": np.mean(np.abs(data.images.astype(float) - worlds["balanced"].images.astype(float))),
    }
print(f"{'preset':15s}{'naming position':>17s}{'size':>7s}{'colour':>8s}{'words':>7s}{'|pixel change|':>16s}")
for name, c in content.items():
    print(f"{name:15s}{c['position']:17.2f}{c['size']:7.2f}{c['colour']:8.2f}{c['words']:7.1f}"
          f"{c['pixel change']:16.1f}")
assert content["text-poor"]["position"] < 0.5 < content["balanced"]["position"]
assert content["image-poor"]["pixel change"] > 0 == content["text-poor"]["pixel change"]  # text knobs leave images

fig, ax = plt.subplots(figsize=(6, 3.2))
kinds = ("position", "size", "colour")
for k, name in enumerate(PRESETS):
    ax.bar(np.arange(3) + 0.2 * k - 0.3, [content[name][x] for x in kinds], width=0.2, label=name)
ax.set_xticks(range(3), [f"captions naming a {x}" for x in kinds], fontsize=8)
ax.set_ylabel("fraction of captions")
ax.legend(fontsize=7)
save_figure(fig, OUT, "caption_content.png")

# %% [markdown]
# ## 4. Trivial baselines for single-modal retrieval
#
# How well can one retrieve similar *images* for an image (I2I), or similar captions for a caption (T2T), with no
# learning at all? The trivial baselines are the cosine of raw pixels (I2I) and of bag-of-words counts (T2T),
# scored by NDCG@10 (tutorial 06) with two kinds of relevance: ROUGE-L between captions (the paper's), and the
# true scene attributes (only synthetic data has them). `rebalance_torch.teachers.quality_report` computes them
# next to a teacher's; here we call the pieces directly, per preset.
#
# Read the table by column. Against attribute relevance, the bag of words loses ground when captions omit
# things (text-poor) and most when they say wrong things (noisy-captions). Raw pixels barely notice the
# image-poor degradations: pixel cosine is a crude measure of scene similarity to begin with, which is why a
# *learned* image teacher is worth having.

# %%
banner("4. trivial baselines")
from rebalance_ref.threads import set_threads  # noqa: E402
from rebalance_torch.evaluate import single_modal_ndcg, split_relevance  # noqa: E402
from rebalance_torch.teachers import bag_of_words, pixel_baseline, train_teachers  # noqa: E402

set_threads(1)
N_TEST = 100 if FAST else 400
baselines = {}
for name in PRESETS:
    test = make_world(N_TEST, name, seed=7, size=32)
    scores = single_modal_ndcg(pixel_baseline(test), bag_of_words(test.pairs()[1]), split_relevance(test))
    baselines[name] = scores
print(f"{'preset':15s}{'I2I pixels attr':>16s}{'T2T BoW attr':>14s}{'I2I pixels rouge':>18s}{'T2T BoW rouge':>15s}")
for name, s in baselines.items():
    print(f"{name:15s}{s['attr_i2i@10']:16.1f}{s['attr_t2t@10']:14.1f}{s['rouge_i2i@10']:18.1f}"
          f"{s['rouge_t2t@10']:15.1f}")
print("(NDCG@10 x 100)")
assert baselines["text-poor"]["attr_t2t@10"] < baselines["balanced"]["attr_t2t@10"]

# %% [markdown]
# ## 5. The teachers
#
# Two frozen single-modality teachers, each trained on **one** modality of the training split only:
#
# * the **image teacher** (default "supervised") learns to predict the scenes' attribute labels from pixels — it
#   stands in for an ImageNet-style pretrained backbone. A self-supervised variant ("ssl") is offered too.
# * the **text teacher** is a small transformer trained on captions alone: two captions of the same image are a
#   positive pair.
#
# Their features (one row per training caption, the official `.npy` format) are what the student's IIC/TTC and
# structure distillation use in stage 2. `train_teachers` trains both, freezes them, computes the features, and
# reports their I2I / T2T NDCG against the trivial baselines on the test split. With attribute relevance the
# image teacher should beat raw pixels: it was trained to see shapes, colours, sizes and positions, which is
# exactly what the student's text side lacks under "text-poor". Whether the text teacher beats bag-of-words
# depends on what the captions still say. **Read the verdicts**: docs/design.md §4's rule of thumb is that a teacher is
# useful only where its structure beats what is available without it (tutorial 05 shows what the measured
# ablations found).

# %%
banner("5. teachers on text-poor")
n_train, epochs = (250, 2) if FAST else (1000, 5)
splits = make_splits("text-poor", n_train=n_train, n_val=50, n_test=N_TEST, seed=0, size=32)
if FAST:
    print("fast mode: the teachers train briefly and come out weak; run without REBALANCE_FAST for the comparison")
result = train_teachers({"train": splits["train"], "test": splits["test"]}, seed=0, epochs=epochs, log=print)
print("feature arrays:", {k: v.shape for k, v in result.features.items()})
n_rows = len(splits["train"].pairs()[1])
assert result.features["train_image"].shape[0] == n_rows == result.features["train_text"].shape[0]

report = result.report
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for ax, modality, task in ((axes[0], "image", "i2i"), (axes[1], "text", "t2t")):
    r = report[modality]
    kinds = sorted(r["beats_baseline"])
    teacher = [r["teacher"][f"{k}_{task}@10"] for k in kinds]
    base = [r["baseline"][f"{k}_{task}@10"] for k in kinds]
    ax.bar(np.arange(len(kinds)) - 0.2, base, width=0.4, label=r["baseline_name"])
    ax.bar(np.arange(len(kinds)) + 0.2, teacher, width=0.4, label=f"{modality} teacher")
    ax.set_xticks(range(len(kinds)), [f"{k} relevance" for k in kinds])
    ax.set_ylabel(f"{task.upper()} NDCG@10 x 100")
    ax.legend(fontsize=7, loc="lower right")
    for k in kinds:
        verdict = "beats" if r["beats_baseline"][k] else "does NOT beat"
        print(f"{modality} teacher, {k} relevance: {r['teacher'][f'{k}_{task}@10']:.1f} {verdict} "
              f"{r['baseline_name']} {r['baseline'][f'{k}_{task}@10']:.1f}")
fig.suptitle(f"teachers vs trivial baselines (text-poor, {n_train} training scenes, {epochs} epochs)", fontsize=9)
save_figure(fig, OUT, "teachers_vs_baselines.png")

# %% [markdown]
# What to take from this: ROUGE-L relevance is computed *from the captions*, so under text-poor it rewards
# agreeing on the words the captions happen to keep, and bag-of-words is a strong T2T baseline for it. Attribute
# relevance knows where objects are and how big, which the captions mostly omit — that is where the image
# teacher's structure is richer than the text's, and where distilling it should help the student (tutorial 05).
# `rebalance teachers` runs the same on the command line and writes `report.json`.

# %% [markdown]
# ## Exercises
#
# 1. Build a world with `WorldKnobs(washout=1.0)`: colour is gone from the pixels. Which attribute can an image
#    teacher no longer learn, and which captions become *more* informative than their images?
# 2. Add `"noisy-captions"` to section 5 (train the teachers on it). Does the text teacher still beat
#    bag-of-words? Why might a learned model be more robust to a wrong word than word counts?
# 3. Train the "ssl" image teacher (`train_teachers(..., kind="ssl")`) on text-poor. Does it beat raw pixels?
#    docs/design.md §4 reports that a self-supervised teacher weaker than raw pixels made the student worse — why would
#    that be?
# 4. The T2T baseline uses the raw word counts. Try a mean-centred or tf-idf-weighted bag of words: does the
#    baseline get harder to beat?
# 5. Double `n_train` in section 5. Which teacher improves more with data?
