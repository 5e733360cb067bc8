# %% [markdown]
# # Tutorial 07 — Export the student, verify it, and search with onnxruntime only
#
# **Run it:** `python tutorials/07_export_and_search.py` (under a minute on one thread).
# Fast mode, `REBALANCE_FAST=1`, trains the student for a few dozen steps only: export, verification and
# search work the same, but the hits are poor. The run folder, the bundle and the figures go to
# `tutorials/out/07_export_and_search/` (or `$REBALANCE_TUTORIAL_OUT/07_export_and_search/`).
#
# A trained dual encoder is served without PyTorch: the image and text towers (and, optionally, the fusion
# encoder with the ITM head for re-ranking) are exported to ONNX in a **bundle** folder, and
# `exports.serving.runtime.Retriever` serves it with NumPy and onnxruntime alone. This tutorial
#
# 1. trains a small student (stage 1, as in tutorial 04);
# 2. exports it with `exports.exporter.export.export_bundle` and reads the manifest;
# 3. verifies the bundle against the torch student (`exports.exporter.verify`): outputs at several batch sizes and
#    lengths, rankings, recall;
# 4. indexes a gallery of images and captions and searches it by text, by image and with ITM re-ranking;
# 5. proves the serving side needs no torch: the same search in a fresh process where `import torch` fails.
#
# The command-line route: `rebalance export --run RUN --out BUNDLE --verify`, then
# `rebalance index --bundle BUNDLE --data DATA` and `rebalance search --bundle BUNDLE --text "a red circle"`
# (`docs/export.md`).

# %%
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance_ref.threads import set_threads
from rebalance_torch.config import TrainConfig
from rebalance_torch.trainer import train

set_threads(1)
OUT = out_dir("07_export_and_search")
RUN, BUNDLE = OUT / "run", OUT / "bundle"
for folder in (RUN, BUNDLE):
    shutil.rmtree(folder, ignore_errors=True)  # ours, from a previous execution
print(f"fast mode: {FAST}; run, bundle and figures in {OUT}")

# %% [markdown]
# ## 1. A student to export
#
# Stage 1 on the "balanced" world, where captions name every attribute, so that text queries like "a red
# circle" have clear answers.

# %%
banner("1. train a student")
config = TrainConfig(preset="balanced", n_train=200 if FAST else 500, n_val=40 if FAST else 100,
                     n_test=60 if FAST else 100, stage1_steps=30 if FAST else 160, stage2_steps=0, batch_size=32,
                     eval_every=1000 if FAST else 80, seed=0)
summary = train(config, RUN, stages=(1,), progress=False, evaluate_test=False)
print(f"stage 1: {summary['timings']['stage1']:.1f} s; best checkpoint in {RUN.name}/checkpoints/")

# %% [markdown]
# ## 2. Export
#
# `export_bundle(run_dir, bundle_dir)` loads the run's best checkpoint and writes the ONNX graphs, the tokenizer
# and a `manifest.json` with the format version, dimensions, opset, library versions and the SHA-256 of every
# file. The bundle is written to a temporary folder and moved into place, so a failed export never leaves a
# half-written bundle.

# %%
banner("2. export")
from exports.exporter.export import export_bundle  # noqa: E402

export_bundle(RUN, BUNDLE)
manifest = json.loads((BUNDLE / "manifest.json").read_text())
for name, record in sorted(manifest["files"].items()):
    print(f"  {name:24s} {record['bytes']:>9,d} bytes  sha256 {record['sha256'][:12]}…")
print("graphs:", {k: (g["inputs"], g["outputs"]) for k, g in manifest["onnx"]["graphs"].items()})
print(f"embedding dim {manifest['model']['embed_dim']}, image size {manifest['model']['image_size']}, "
      f"opset {manifest['onnx']['opset']}, k_test {manifest.get('k_test')}")

# %% [markdown]
# ## 3. Verify
#
# An export is only as good as its check. `verify_run_bundle` runs the torch student and the ONNX graphs on the
# same inputs — at batch sizes and text lengths other than the ones used for export, since a graph traced at one
# shape can silently break at another — and compares outputs within named tolerances; then it ranks the run's
# test split both ways and compares the top-k lists (equal up to ties) and the recall. Recall is a stricter test
# than it looks: when two captions score within rounding of each other (identical captions do), float32
# differences between the runtimes can swap them, and one R@1 hit with them; so where the two recalls differ,
# the verifier checks that every query's rank lies within the ranks torch's near-ties allow, and says so.

# %%
banner("3. verify")
from exports.exporter.verify import verify_run_bundle  # noqa: E402

report = verify_run_bundle(BUNDLE, RUN)
print(report.table())
assert report.ok, "the bundle disagrees with the torch student"

# %% [markdown]
# ## 4. Search, with NumPy and onnxruntime only
#
# From here on nothing uses torch. `Retriever.load` checks the manifest and every file's hash (a tampered or
# incomplete bundle is refused), then opens the graphs with onnxruntime on the threads we ask for. A gallery is
# a set of embedded images and captions; `index_split` embeds a whole `CaptionedImages` split (rebuilt here from
# the shapes world, NumPy only), `save_gallery` stores it in the bundle. Search is exact top-k by cosine.

# %%
banner("4. search")
from exports.serving.runtime import Retriever, format_hits, index_split  # noqa: E402
from rebalance_ref.metrics import retrieval_recall  # noqa: E402
from rebalance_ref.shapes import make_splits  # noqa: E402

test = make_splits(config.preset, config.n_train, config.n_val, config.n_test, seed=config.seed,
                   size=config.image_size)["test"]  # the run's own test split, deterministic from the config
retriever = Retriever.load(BUNDLE, threads=1)
gallery = index_split(retriever, test)  # all images and all captions: a mixed gallery
retriever.save_gallery()
print(f"gallery: {gallery.n_images} images + {gallery.n_captions} captions, dim {gallery.embeddings.shape[1]}")

QUERY = "a red circle"
print(f'\ntext query "{QUERY}", mixed gallery (images and captions):')
print(format_hits(retriever.search_text(QUERY, k=5, modality="all")))
image_hits = retriever.search_text(QUERY, k=5)  # a text query searches the images by default
print("\nsame query, images only (the default):")
print(format_hits(image_hits))
reranked = retriever.search_text(QUERY, k=5, rerank=True)
print(f"\nimages re-ranked by the ITM head (top {manifest.get('k_test')} by cosine, re-scored):")
print(format_hits(reranked))

# A known-item query: one of the test captions, whose true image we know. Where does that image rank?
known = 7
ranked = retriever.search_text(test.captions[known][0], k=gallery.n_images, modality="image")
position = next(hit.rank for hit in ranked if hit.index == known)
print(f'\nknown-item query "{test.captions[known][0]}": its image ranks {position} of {gallery.n_images}')

# An image query, from a file on disk:
from PIL import Image  # noqa: E402

query_file = OUT / "query.png"
Image.fromarray(test.images[0]).save(query_file)
print(f"\nimage query {query_file.name} (its own captions: {test.captions[0][:2]}), captions only:")
print(format_hits(retriever.search_image(str(query_file), k=5, modality="text")))

# %% [markdown]
# Read the scores as well as the hits. This student trained for a minute: its embeddings sit in a narrow cone
# (cosines near 1 for everything, tutorial 06's uniformity), and some captions collapse onto the same point, so
# the ranking lives in small differences and many hits are wrong. The mechanics are what this tutorial shows;
# train longer (raise `stage1_steps`) and the very same code serves a better student.
#
# The bundle's embeddings give the same cross-modal recall as the torch student (section 3 checked it). Here it
# is again, from the runtime's own encoders: the cosine scoring a served index delivers.

# %%
txt2img, captions = test.pairs()
v, t = retriever.encode_images(test.images), retriever.encode_texts(captions)
served = retrieval_recall(v @ t.T, txt2img)
print({k: round(val, 1) for k, val in served.items() if k.endswith("mean")})
assert served == report.recall["bundle"] or np.isclose(served["r_mean"], report.recall["bundle"]["r_mean"])

fig, axes = plt.subplots(2, 5, figsize=(10, 4.6))
for ax, hit in zip(axes[0], image_hits, strict=True):
    ax.imshow(gallery.pixels[hit.index], interpolation="nearest")
    ax.set_title(f"cos {hit.score:.2f}", fontsize=8)
for ax, hit in zip(axes[1], reranked, strict=True):
    ax.imshow(gallery.pixels[hit.index], interpolation="nearest")
    ax.set_title(f"ITM {hit.itm:+.2f}", fontsize=8)
for ax in axes.ravel():
    ax.axis("off")
fig.suptitle(f'"{QUERY}": top 5 images by cosine (top row) and after ITM re-ranking (bottom row)', fontsize=9)
save_figure(fig, OUT, "search_results.png")

# %% [markdown]
# ## 5. Proof: serving needs no torch
#
# Run the same search in a fresh Python process in which `import torch` raises (`sys.modules["torch"] = None`).
# The gallery saved in the bundle is loaded with it, so the process only opens the bundle and searches.

# %%
banner("5. torch-free")
SERVE = f"""
import json, sys
sys.modules["torch"] = None  # from here on, `import torch` raises ImportError
from exports.serving.runtime import Retriever
retriever = Retriever.load({str(BUNDLE)!r}, threads=1)
hits = retriever.search_text({QUERY!r}, k=5, modality="image")
print(json.dumps([[hit.row, hit.score] for hit in hits]))
"""
env = {**os.environ, "OMP_NUM_THREADS": "1"}
served = subprocess.run([sys.executable, "-c", SERVE], capture_output=True, text=True, env=env, cwd=OUT, check=True)
rows_scores = json.loads(served.stdout.strip().splitlines()[-1])
print("torch-free process:", [(row, round(score, 4)) for row, score in rows_scores])
assert [row for row, _ in rows_scores] == [hit.row for hit in image_hits]
assert np.allclose([score for _, score in rows_scores], [hit.score for hit in image_hits], atol=1e-6)
print("same hits as in this process, without torch")

# %% [markdown]
# ## Exercises
#
# 1. Query "a small blue square in the top left" and then "a blue square". Which hits change, and why does the
#    balanced world's student care about position words?
# 2. Change one byte of `bundle/text_encoder.onnx` (on a copy of the bundle) and load it with `Retriever.load`.
#    What does the error say?
# 3. Index only the captions (`index_split(retriever, test, what="captions")`) and search with an image file.
#    Compare with the mixed gallery: where do images rank against captions, and what does tutorial 06 section 4
#    say about it?
# 4. Time `retriever.encode_texts` for 1, 8 and 64 texts (one thread). Where does the per-text cost flatten out?
#    Use `rebalance bench retrieval` for proper side-by-side numbers.
# 5. Export the stage-2 student of tutorial 05 instead (`export_bundle(<its run folder>, ...)`) and compare its
#    image-to-image hits with this one's.
