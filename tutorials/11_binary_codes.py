# %% [markdown]
# # Tutorial 11 — Binary codes: a hash head on the student, Hamming search, and exact re-ranking
#
# **Run it:** `python tutorials/11_binary_codes.py` (about a minute on one thread: it trains a small student
# first). Fast mode, `REBALANCE_FAST=1`, trains the student and the heads for a few steps only — the code path is
# the same, the numbers are noise. The run folder, the bundle and the figures go to
# `tutorials/out/11_binary_codes/` (or `$REBALANCE_TUTORIAL_OUT/11_binary_codes/`).
#
# A float32 embedding of D = 128 dimensions costs 512 bytes an item; a 64-bit code costs 8. Over a million items
# that is 512 MB against 8 MB, and comparing two codes is one XOR and a popcount. This tutorial
#
# 1. trains a small student (stage 1, as in tutorial 04);
# 2. builds the hash head's pieces by hand — the per-input channel mask, the tanh-relaxed code, packing signs into
#    bytes and the Hamming distance — and checks the reference's gradients (`rebalance_ref.hashing`);
# 3. trains heads of several widths on the student's frozen embeddings and selects them on validation
#    (`rebalance.codes.train_codes`, the command `rebalance codes train`);
# 4. measures on the test split what the codes keep: Hamming-only and Hamming-then-exact-re-ranking against the
#    float search, and against untrained random hyperplanes;
# 5. exports a bundle with the code graphs and searches it by codes with onnxruntime only.
#
# `docs/codes.md` gives the formulas, where each comes from, and the demo's measured table.

# %%
import json
import shutil

import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance import codes
from rebalance_ref import hashing
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.threads import set_threads
from rebalance_ref.tolerances import FD_REL_TOL, KINKED_FD_STEP
from rebalance_torch.config import TrainConfig
from rebalance_torch.trainer import train

set_threads(1)
OUT = out_dir("11_binary_codes")
RUN, BUNDLE = OUT / "run", OUT / "bundle"
for folder in (RUN, BUNDLE):
    shutil.rmtree(folder, ignore_errors=True)  # ours, from a previous execution
print(f"fast mode: {FAST}; run, bundle and figures in {OUT}")

# %% [markdown]
# ## 1. A student to hash
#
# Stage 1 on the text-poor world (the demo's). The hash head never changes the student: it is trained afterwards,
# on the student's frozen embeddings.

# %%
banner("1. train a student")
config = TrainConfig(preset="text-poor", n_train=200 if FAST else 600, n_val=60 if FAST else 150,
                     n_test=80 if FAST else 300, stage1_steps=30 if FAST else 300, stage2_steps=0, batch_size=32,
                     eval_every=1000 if FAST else 100, seed=0)
summary = train(config, RUN, stages=(1,), progress=False, evaluate_test=False)
print(f"stage 1: {summary['timings']['stage1']:.1f} s")

# %% [markdown]
# ## 2. The head, by hand
#
# For a unit embedding z (D,), the head computes
#
# - a **mask** m = sigmoid(W_g z + b_g) ∈ (0, 1)^D, one weight per channel and *per input* (our reading of AHLR's
#   "dynamic masking": its method text is not public);
# - the **relaxed code** h = tanh(α W (m ⊙ z)) ∈ (−1, 1)^bits; the code itself is the sign pattern h > 0, so α
#   (which grows as √(epoch + 1) while training, DJSRH's schedule) sharpens h towards ±1 without changing the code.
#
# A code is stored as bits, 8 to a byte (`np.packbits`). The Hamming distance of two codes is the number of bits
# where they differ, popcount(a XOR b); read as ±1 vectors, d = (bits − a·b) / 2, so the nearest codes are the
# largest inner products of the sign vectors.

# %%
banner("2. mask, code, bits and Hamming distance by hand")
rng = np.random.default_rng(0)
D, BITS = 6, 16
z = rng.standard_normal((3, D))
z /= np.linalg.norm(z, axis=1, keepdims=True)
w, w_gate, b_gate = rng.standard_normal((BITS, D)), rng.standard_normal((D, D)), rng.standard_normal(D)
mask = 1 / (1 + np.exp(-(z @ w_gate.T + b_gate)))
h_hand = np.tanh(2.0 * (mask * z) @ w.T)
h, _ = hashing.hash_head(z, w, w_gate, b_gate, 2.0)
assert np.allclose(h, h_hand)
assert np.array_equal(h > 0, hashing.hash_head(z, w, w_gate, b_gate, 9.0)[0] > 0)  # alpha never moves a sign
print("mask of row 0:", np.round(mask[0], 2))
print("relaxed code of row 0:", np.round(h[0], 2))

from exports.serving.codes import hamming_distances, pack_codes, unpack_codes  # noqa: E402

packed = pack_codes(h)
print(f"packed: {packed.shape} uint8 ({BITS} bits = {packed.shape[1]} bytes an item); row 0 =",
      " ".join(f"{byte:08b}" for byte in packed[0]))
signs = unpack_codes(packed)
d_hand = (BITS - signs @ signs.T) / 2
assert np.array_equal(hamming_distances(packed, packed), d_hand.astype(np.int32))
print("Hamming distances:\n", d_hand.astype(int))

# %% [markdown]
# ## 3. The loss and its gradients
#
# `rebalance_ref.hashing.hash_loss` trains an image head and a text head (or one shared head) on paired
# embeddings v_i, t_i:
#
# - **contrast** — InfoNCE between the normalised relaxed codes of an image and its caption (`losses.itc` on h);
# - **cross**, **intra** — the auxiliary hash loss (DJSRH style): code inner products h_I h_Tᵀ / bits (and
#   h_I h_Iᵀ, h_T h_Tᵀ) should reproduce a target S built from the student's own cosine matrices
#   (`code_target`: S̃ = β·cos(v) + (1 − β)·cos(t), S = μ((1 − η) S̃ + η S̃S̃ᵀ / B));
# - **quant** mean((|h| − 1)²) pulls entries to ±1; **balance** ‖mean(h)‖² asks every bit to be on for half the
#   batch.
#
# The reference derives every gradient by hand; here they are checked against finite differences (the |h| of the
# quantisation term has a kink at 0, so the check uses a small step at a point with no entry near 0).

# %%
banner("3. the loss's gradients vs finite differences")
v, t = rng.standard_normal((5, D)), rng.standard_normal((5, D))
v, t = v / np.linalg.norm(v, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
head = {"w_i": 2 * rng.standard_normal((8, D)), "w_gate_i": rng.standard_normal((D, D)), "b_gate_i": np.zeros(D),
        "w_t": 2 * rng.standard_normal((8, D)), "w_gate_t": rng.standard_normal((D, D)), "b_gate_t": np.zeros(D)}
inputs = {"v": v, "t": t, "s": hashing.code_target(v, t)[0], **head, "alpha": 1.5, "tau": 0.2}
value, _ = hashing.hash_loss(**inputs)
errors = gradient_errors(hashing.hash_loss, inputs, ["v", "t", *head, "alpha"], step=KINKED_FD_STEP)
print(f"loss {value:.4f}; largest relative gradient error {max(errors.values()):.1e}")
assert max(errors.values()) <= FD_REL_TOL

# %% [markdown]
# ## 4. Train heads and select them on validation
#
# `codes.train_codes` encodes the run's train and validation splits with its (frozen) student, trains for each
# width a head per modality and a shared head, keeps the epoch with the best validation recall of the codes
# (Hamming only), then the better of the two kinds, and writes `RUN/codes/heads-{bits}.pt`. The command:
# `rebalance codes train --run RUN --bits 32,64,128`.

# %%
banner("4. train heads")
WIDTHS = (16, 64) if FAST else (32, 64, 128)
trained = codes.train_codes(RUN, bits=WIDTHS, epochs=3 if FAST else 20)
for width, row in trained["bits"].items():
    c = row["candidates"]
    print(f"{width:>4} bits: validation R-mean separate {c['separate']['val_r_mean']:.2f}, shared "
          f"{c['shared']['val_r_mean']:.2f} -> kept {row['chosen']}")
print(f"float validation R-mean {trained['val_float']['r_mean']:.2f}; {trained['seconds']:.1f} s in all")

# %% [markdown]
# ## 5. What the codes keep, on the test split
#
# Three ways to search, measured with the same search the bundle serves (`exports.serving.codes`):
#
# - **Hamming only**: the k codes nearest the query's code (ties by the lower gallery index);
# - **Hamming top M, then exact**: the M nearest codes re-ranked by the float cosine — the codes only pick the
#   candidates, so memory is read for M float rows per query instead of the whole gallery;
# - **untrained**: the same widths with the head as initialised (random hyperplanes through the origin: LSH).

# %%
banner("5. float vs codes on the test split")
SHORTLISTS = (10, 30) if FAST else (20, 50, 100)
result = codes.evaluate_codes(RUN, "test", shortlists=SHORTLISTS, untrained=True)
print(codes.results_table(result))


def r10(r):
    return 0.5 * (r["i2t_r10"] + r["t2i_r10"])


widths = [int(b) for b in result["codes"]]
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
left.axhline(r10(result["float"]), color="black", lw=1, ls="--", label="float32 cosine (exact)")
left.plot(widths, [r10(result["codes"][str(b)]["hamming"]) for b in widths], "o-", label="Hamming only (trained)")
for m in SHORTLISTS:
    left.plot(widths, [r10(result["codes"][str(b)]["shortlist"][str(m)]) for b in widths], "s-",
              label=f"Hamming top {m}, then exact")
left.plot(widths, [r10(result["untrained"][str(b)]["hamming"]) for b in widths], "x:", color="grey",
          label="Hamming only (untrained LSH)")
left.set_xscale("log", base=2)
left.minorticks_off()
left.set(xticks=widths, xticklabels=[str(b) for b in widths], xlabel="code bits",
         ylabel="cross-modal R@10 (mean of i2t, t2i), %", title=f"test split: {result['images']} images")
left.legend(fontsize=8)
sizes = {"float32": result["float_bytes_per_item"], **{f"{b} bits": b // 8 for b in widths}}
right.bar(list(sizes), list(sizes.values()), color=["black"] + ["tab:blue"] * len(widths))
for i, n in enumerate(sizes.values()):
    right.text(i, n, f"{n} B\n{n:,} MB / 1M items", ha="center", va="bottom", fontsize=8)
right.set(yscale="log", ylabel="bytes per item", title="memory per item (gallery of 1M items: MB)")
right.set_ylim(1, 4 * result["float_bytes_per_item"])
save_figure(fig, OUT, "codes_vs_bits.png")

# %% [markdown]
# Read the left panel from the bottom: untrained random hyperplanes lose most of the recall (a text-poor student's
# image and caption embeddings sit in two different regions, and hyperplanes through the origin do not follow
# them); the trained head keeps much more; re-ranking a short Hamming list by the float cosine recovers the
# float search. The right panel is the memory: bits / 8 bytes an item for a code, 4·D for the float embedding
# (the float rows are still needed to re-rank, but only M of them per query are read).

# %% [markdown]
# ## 6. Codes in the bundle
#
# `export_bundle` finds the run's heads (64 bits by default) and writes their graphs beside the encoders:
# `codes_image.onnx` and `codes_text.onnx` (embeddings (B, D) → h (B, bits); one `codes.onnx` when the head is
# shared). The manifest's `format_version` is 2 and its `codes` section names them; `index` stores every
# gallery row's packed code in `gallery/codes.npy`. The command line: `rebalance export --run RUN --out BUNDLE`,
# `rebalance index ...`, `rebalance search --bundle BUNDLE --text "a red circle" --codes --shortlist 50`.

# %%
banner("6. export, index, search by codes")
from exports.exporter.export import export_bundle  # noqa: E402
from exports.serving.runtime import Retriever, format_hits, index_split  # noqa: E402
from rebalance_torch.data import load_splits  # noqa: E402

export_bundle(RUN, BUNDLE)
manifest = json.loads((BUNDLE / "manifest.json").read_text())
print("format_version", manifest["format_version"], "codes", manifest["codes"])
retriever = Retriever.load(BUNDLE)
test = load_splits(config)["test"]
index_split(retriever, test, what="images")
retriever.save_gallery()
query = "a red circle"
for label, options in (("exact float", {}), ("Hamming only", {"codes": True}),
                       ("Hamming top 20, exact re-rank", {"codes": True, "shortlist": 20})):
    print(f"-- {label}")
    print(format_hits(retriever.search_text(query, k=3, **options)))
g = retriever.gallery
print(f"gallery: {g.embeddings.nbytes:,} bytes of float32 embeddings, {g.codes.nbytes:,} bytes of codes")

# %% [markdown]
# ## Exercises
#
# 1. Train heads with the mask frozen open (`HashSettings(gate=False)` through `rebalance_torch.hash_heads.
#    fit_code_heads`) and compare their validation recall with the masked heads': does the per-input mask help on
#    this student? (`docs/codes.md` reports what we measured on the demo.)
# 2. Set the loss weights of the auxiliary hash loss to 0 (`weights={"cross": 0, "intra": 0}`), then the
#    contrast's: which term carries the codes' recall?
# 3. With 32-bit codes, how large must the shortlist be to keep 95 % of the float R@10? Plot the kept share
#    against M.
# 4. Search a gallery of 1 000 000 random 64-bit codes with `exports.serving.codes.HammingIndex` and time it
#    against `exports.serving.search.ExactIndex` over 1 000 000 random 128-d float rows (`rebalance bench
#    retrieval` does this properly).
