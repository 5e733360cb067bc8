# %% [markdown]
# # Tutorial 06 — The evaluation protocol, and the official metric code's quirks
#
# **Run it:** `python tutorials/06_evaluation_protocol.py` (about ten seconds on one thread).
# Fast mode, `REBALANCE_FAST=1`, uses a test split of 60 images instead of 200. Figures go to
# `tutorials/out/06_evaluation_protocol/` (or `$REBALANCE_TUTORIAL_OUT/06_evaluation_protocol/`).
#
# The paper reports three families of numbers (docs/design.md §3, `docs/metrics.md`):
#
# 1. **cross-modal Recall@K** (image→text, text→image), scored by embedding cosine *or* re-ranked by the ITM head;
# 2. **single-modal NDCG@k** (image→image, text→text) with graded relevance from **ROUGE-L** between captions;
# 3. **mixed NDCG@k**: a query against a gallery of images *and* captions.
#
# All of them are computed by `rebalance_ref.metrics` (NumPy); `rebalance_torch.evaluate` assembles them into
# the paper's tables. To keep this tutorial about the *protocol*, the embeddings come from a stand-in retriever
# built in a few lines (not the student — tutorial 04 evaluates a trained student the same way). At the end we
# reproduce, on toy numbers, each quirk of the official metric code that we deliberately do not copy.

# %%
import numpy as np
from _common import FAST, banner, out_dir, plt, save_figure

from rebalance_ref.metrics import modality_gap, ndcg_at_k, retrieval_ranks, retrieval_recall, rouge_l
from rebalance_ref.shapes import attribute_targets, make_world
from rebalance_torch.evaluate import mixed_ndcg, single_modal_ndcg, split_relevance
from rebalance_torch.teachers import bag_of_words

OUT = out_dir("06_evaluation_protocol")
rng = np.random.default_rng(6)
np.set_printoptions(precision=3, suppress=True)
N_TEST = 60 if FAST else 200
print(f"fast mode: {FAST}; {N_TEST} test images; figures in {OUT}")

# %% [markdown]
# ## 0. A stand-in retriever on the shapes world
#
# Test images come from the shapes world (tutorial 03) under the "text-poor" preset: 5 captions per image that
# often omit positions and sizes. Our stand-in **image** embedding is a random projection of the true scene
# attributes plus noise (an imperfect image encoder); the **text** embedding maps a caption's bag of words
# linearly onto the clean image embedding, fitted by ridge regression on a separate training world. Crude, but it
# has what matters here: matching pairs score high, and captions lose what they do not mention.

# %%
banner("0. stand-in retriever")
train = make_world(400, "text-poor", seed=1)
test = make_world(N_TEST, "text-poor", seed=2)
projection = rng.standard_normal((201, 32)) / 4.0  # attributes (201 multi-hot) -> 32-d


def image_embedding(split, noise):
    clean = attribute_targets(split.attributes)[0] @ projection
    return clean + noise * np.linalg.norm(clean, axis=1).mean() * rng.standard_normal(clean.shape) / np.sqrt(32)


train_txt2img, train_captions = train.pairs()
txt2img, captions = test.pairs()  # caption c belongs to image txt2img[c]; image-major order, 5 per image
counts = bag_of_words(train_captions + captions)  # word counts over one vocabulary (no labels involved)
X, X_test = counts[:len(train_captions)], counts[len(train_captions):]
Y = image_embedding(train, noise=0.0)[train_txt2img]
ridge = np.linalg.solve(X.T @ X + 1.0 * np.eye(X.shape[1]), X.T @ Y)  # (vocab, 32)

v_clean = image_embedding(test, noise=0.0)
v = image_embedding(test, noise=0.8)  # (N, 32)
t = X_test @ ridge  # (5N, 32)
v /= np.linalg.norm(v, axis=1, keepdims=True)
t /= np.linalg.norm(t, axis=1, keepdims=True)
print(f"v {v.shape}, t {t.shape}; image 0's captions:", *captions[:5], sep="\n  ")

# %% [markdown]
# ## 1. Cross-modal Recall@K
#
# * **i2t R@K**: the share of images whose *best-ranked* caption (of its 5) is among the top K captions;
# * **t2i R@K**: the share of captions whose image is among the top K images;
# * `i2t_mean`, `t2i_mean` average over K ∈ {1, 5, 10}; `r_mean` averages all six (the paper's headline).
#
# `retrieval_recall` ranks by counting (rank = number of items scoring strictly higher), no sorting. We check
# i2t R@1 and t2i R@5 by hand with `argsort`.

# %%
banner("1. Recall@K by cosine")
sim = v @ t.T  # (N, 5N) cosine
rec = retrieval_recall(sim, txt2img)
print({k: round(val, 1) for k, val in rec.items()})

top1 = np.argmax(sim, axis=1)  # each image's best caption
i2t_r1_by_hand = 100 * np.mean(txt2img[top1] == np.arange(N_TEST))
t2i_r5_by_hand = 100 * np.mean([c_img in np.argsort(-sim[:, c])[:5] for c, c_img in enumerate(txt2img)])
print(f"by hand: i2t R@1 = {i2t_r1_by_hand:.1f}, t2i R@5 = {t2i_r5_by_hand:.1f}")
assert np.isclose(rec["i2t_r1"], i2t_r1_by_hand) and np.isclose(rec["t2i_r5"], t2i_r5_by_hand)

# %% [markdown]
# ## 2. Re-ranking with the ITM head
#
# The paper does not report cosine recall: for each query it takes the top `k_test` candidates by cosine and
# re-scores them with the ITM head's "match" logit, which looks at the image and the caption jointly through the
# fusion encoder. Everything outside the top `k_test` ranks below every candidate.
# `rebalance_torch.evaluate.itm_rerank(student, embeddings, k)` does exactly that for a student; here a toy
# "student" stands in whose ITM logit compares the caption with the *noise-free* image embedding — a re-scorer
# that sees more than the retrieval space, as a fusion encoder can.
#
# Two things to notice. First, re-ranking only reorders the top `k_test`, and every item outside it shares one
# floor score. Under the package's tie rule (optimistic by default: rank = number of items scoring *strictly*
# higher) a positive outside the top `k_test` gets rank `k_test`, so **R@K is exact only when k_test ≥ K**; with
# k_test = 5, "R@10" is 100% by construction, and the pessimistic rule shows the honest bound. The paper's
# k_test (128, 256) is far above 10. Second, a dual-encoder retriever served from an index (tutorial 07)
# delivers the *cosine* numbers, not the re-ranked ones — we report both.

# %%
banner("2. ITM re-ranking")
import torch  # noqa: E402

from rebalance_ref.threads import set_threads  # noqa: E402
from rebalance_torch.evaluate import SplitEmbeddings, itm_rerank, recall_pair  # noqa: E402

set_threads(1)


class ToyMatcher:
    """Quacks like a Student for itm_rerank: itm_logits(text tokens, mask, image tokens) -> (B, 2) logits."""

    training = False

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def itm_logits(self, text_tokens, mask, image_tokens):
        match = 10.0 * torch.nn.functional.cosine_similarity(text_tokens[:, 0], image_tokens[:, 0], dim=1)
        return torch.stack([-match, match], dim=1)


emb = SplitEmbeddings(
    image_tokens=torch.from_numpy(v_clean[:, None, :]),  # (N, 1, 32): what the toy ITM head looks at
    text_tokens=torch.from_numpy(t[:, None, :]),  # (5N, 1, 32)
    mask=torch.ones(len(t), 1, dtype=torch.int64),
    v=v,
    t=t,
    txt2img=txt2img,
)
COLUMNS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r10", "r_mean")
rows, reranked = {"cosine": rec}, {}
for k_test in (5, 20, 64):
    reranked[k_test] = itm_rerank(ToyMatcher(), emb, k=k_test)  # (score_i2t (N, 5N), score_t2i (5N, N))
    itm = recall_pair(*reranked[k_test], txt2img, "itm")  # keys itm_i2t_r1, ...
    rows[f"ITM, k_test={k_test}"] = {k.removeprefix("itm_"): val for k, val in itm.items()}
rows["ITM, k_test=5, pessimistic"] = retrieval_recall(reranked[5][0], txt2img, sim_t2i=reranked[5][1],
                                                      ties="pessimistic")
print(f"{'scoring':28s}" + "".join(f"{k:>9s}" for k in COLUMNS))
for name, r in rows.items():
    print(f"{name:28s}" + "".join(f"{r[k]:9.1f}" for k in COLUMNS))
assert rows["ITM, k_test=5"]["i2t_r10"] == 100.0  # the floor artefact: k_test < K
assert rows["ITM, k_test=5, pessimistic"]["i2t_r10"] <= rows["cosine"]["i2t_r5"]  # can't reach beyond the top 5
assert rows["ITM, k_test=64"]["r_mean"] > rows["cosine"]["r_mean"]  # the re-scorer sees more

fig, ax = plt.subplots(figsize=(5.5, 3.5))
ks = np.arange(1, 21)
curves = {"cosine": retrieval_ranks(sim, txt2img)[0],
          "ITM, k_test=64": retrieval_ranks(reranked[64][0], txt2img, sim_t2i=reranked[64][1])[0],
          "ITM, k_test=5 (optimistic)": retrieval_ranks(reranked[5][0], txt2img, sim_t2i=reranked[5][1])[0],
          "ITM, k_test=5 (pessimistic)": retrieval_ranks(reranked[5][0], txt2img, sim_t2i=reranked[5][1],
                                                         ties="pessimistic")[0]}
for name, i2t_rank in curves.items():
    ax.plot(ks, [100 * np.mean(i2t_rank < k) for k in ks], marker=".", label=name,
            linestyle="--" if "optimistic" in name else "-")
ax.axvline(5.5, color="0.7", linewidth=0.8)
ax.set_xlabel("K")
ax.set_ylabel("i2t R@K (%)")
ax.set_title("re-ranking reorders only the top k_test")
ax.legend(fontsize=7)
save_figure(fig, OUT, "recall_at_k.png")

# %% [markdown]
# ## 3. ROUGE-L relevance and single-modal NDCG
#
# Single-modal retrieval has no single "right" answer: other images can be more or less similar. The paper
# grades relevance by **ROUGE-L** between captions (β = 1.2): with LCS the longest common subsequence of words,
# `P = max_r LCS(c, r)/|c|`, `R = max_r LCS(c, r)/|r|` over the reference captions r of an image, and
# `F = (1 + β²) P R / (R + β² P)`. We compute one by hand.

# %%
banner("3. ROUGE-L")
cand, ref = "a small red circle on the left", "a red circle at the left"
# LCS by eye: "a red circle the left" -> 5 words; |cand| = 7, |ref| = 6
P, R, beta = 5 / 7, 5 / 6, 1.2
by_hand = (1 + beta**2) * P * R / (R + beta**2 * P)
print(f"rouge_l = {rouge_l(cand, [ref]):.4f}, by hand {by_hand:.4f}")
assert np.isclose(rouge_l(cand, [ref]), by_hand)

# %% [markdown]
# The relevance matrix `M` (5N × N) scores every caption against the 5 captions of every image; a caption scored
# against its own image gets 1. For **I2I**, image i stands for its first caption: relevance `M[first_i, j]`; for
# **T2T** the queries are the first captions, relevance `M[c, q]`. `split_relevance` builds `M` (and, on
# synthetic data, relevance from the true attributes) once per split.
#
# NDCG@k: rank the gallery by score (the query itself **removed**), sum the relevance at each rank r divided by
# `log2(r + 1)` (DCG), and divide by the best possible DCG of that row (the ideal list). We check one query by
# hand.

# %%
rel = split_relevance(test)
M = rel.rouge
print(f"M: {M.shape}; M[c, image of c] = 1 for every caption: {np.allclose(M[np.arange(len(M)), txt2img], 1)}")

q = 0
scores_i2i = v @ v.T
relevance_i2i = M[rel.first]  # (N, N)
gallery = np.array([j for j in range(N_TEST) if j != q])
ranked = gallery[np.argsort(-scores_i2i[q, gallery])][:10]
discount = 1 / np.log2(np.arange(2, 12))
dcg = np.sum(relevance_i2i[q, ranked] * discount)
idcg = np.sum(np.sort(relevance_i2i[q, gallery])[::-1][:10] * discount)
package = ndcg_at_k(scores_i2i, relevance_i2i, 10, exclude=np.arange(N_TEST))
print(f"query {q}: NDCG@10 by hand {dcg / idcg:.4f}, ndcg_at_k {package[q]:.4f}")
assert np.isclose(dcg / idcg, package[q])

single = single_modal_ndcg(v, t, rel)
print("single-modal NDCG x 100:", {k: round(val, 1) for k, val in single.items() if k.endswith("@10")})

fig, ax = plt.subplots(figsize=(6, 3.2))
ax.bar(np.arange(1, 11) - 0.2, relevance_i2i[q, ranked], width=0.4, label="retrieved (by cosine)")
ax.bar(np.arange(1, 11) + 0.2, np.sort(relevance_i2i[q, gallery])[::-1][:10], width=0.4, label="ideal")
ax.set_xlabel("rank")
ax.set_ylabel("ROUGE-L relevance")
ax.set_title(f"I2I query {q}: NDCG@10 = {package[q]:.3f}")
ax.legend(fontsize=8)
save_figure(fig, OUT, "ndcg_one_query.png")

# %% [markdown]
# ## 4. Mixed retrieval
#
# In mixed retrieval the gallery holds all images **and** all captions: I2IT (an image query) and T2IT (a first
# caption as query), relevance from both blocks of `M`, the query removed. Here both blocks are scored by the
# cosine of the shared space, so a **modality gap** (images and captions in separate regions of the sphere) shows
# up directly: whichever modality sits closer to the query crowds the other out of the top of the list. Count
# the images in each I2IT top 10 and compare with their share of the gallery (exercise 3 closes the gap).

# %%
banner("4. mixed retrieval")
mixed = mixed_ndcg(v, t, rel)
print("mixed NDCG x 100:", {k: round(val, 1) for k, val in mixed.items() if k.endswith("@10")})
print(f"modality gap ||mean v - mean t|| = {modality_gap(v, t):.3f}")
i2it_scores = np.concatenate([v @ v.T, v @ t.T], axis=1)  # (N, N + 5N)
np.fill_diagonal(i2it_scores[:, :N_TEST], -np.inf)  # the query removed (a copy of ours, for counting only)
top10 = np.argsort(-i2it_scores, axis=1)[:, :10]
share_images = np.mean(top10 < N_TEST)
print(f"share of images in the I2IT top 10: {share_images:.2f} (images are {N_TEST / (6 * N_TEST):.2f} of the gallery)")

# %% [markdown]
# ## 5. The official metric code's quirks, on toy numbers
#
# `docs/metrics.md` lists where the official `metric.py` differs from `rebalance_ref.metrics`. Each quirk on a
# few numbers:
#
# **(a) Masking the query with score 0 instead of removing it.** The official single-modal code writes score 0
# and relevance 0 at the query's own place. The query then stays in the ranking with cosine 0 — above every
# gallery item with a negative cosine — and takes a rank that a real item should have.

# %%
banner("5a. zero-masking vs removal")
toy_scores = np.array([[1.0, -0.1, -0.2, -0.3, -0.4]])  # query 0 against itself and four others
toy_rel = np.array([[1.0, 1.0, 0.5, 0.0, 0.0]])
removed = ndcg_at_k(toy_scores, toy_rel, 3, exclude=np.array([0]))[0]
zeroed_scores, zeroed_rel = toy_scores.copy(), toy_rel.copy()
zeroed_scores[0, 0], zeroed_rel[0, 0] = 0.0, 0.0  # the official masking (on copies: see (b))
zeroed = ndcg_at_k(zeroed_scores, zeroed_rel, 3)[0]
print(f"NDCG@3 with the query removed: {removed:.3f}; zero-masked as the official code: {zeroed:.3f}")
assert removed == 1.0 and zeroed < removed

# %% [markdown]
# **(b) Writing into the caller's arrays.** The official code masks through a row *view* (`d = sims[index];
# d[index] = 0`), so after evaluation the similarity matrix the caller holds has changed. Our metrics never
# write: they even accept read-only arrays.

# %%
banner("5b. mutation")
sims = np.array([[1.0, 0.3], [0.3, 1.0]])
row = sims[0]  # a view, as in the official loop
row[0] = 0.0
print("caller's matrix after the official-style masking:\n", sims)
frozen = np.array([[1.0, 0.3], [0.3, 1.0]])
frozen.setflags(write=False)
ndcg_at_k(frozen, np.ones((2, 2)), 1, exclude=np.array([0, 1]))  # would raise if it tried to write
print("ndcg_at_k on a read-only matrix: fine, nothing written")

# %% [markdown]
# **(c) Mixing scales in mixed retrieval.** The official I2IT row concatenates image–image *cosines* (≤ 1) with
# image–text *ITM logits* (unbounded; −100 outside the top k). Any caption whose logit exceeds 1 then ranks
# above every image, so "mixed" retrieval becomes text retrieval. We use the cosine on both blocks.

# %%
banner("5c. mixed scales")
score_i2t = reranked[20][0]
official_i2it = np.concatenate([v @ v.T, np.where(score_i2t > score_i2t.min(), score_i2t, -100.0)], axis=1)
top10_official = np.argsort(-official_i2it, axis=1)[:, 1:11]  # position 0 is the query itself (cosine 1)
print(f"share of images in the top 10, official mixed scores: {np.mean(top10_official < N_TEST):.2f}; "
      f"cosine on both blocks: {share_images:.2f}")

# %% [markdown]
# **(d) The transposed T2IT block.** For query caption `5q`, the official image block is
# `scores_t2i.T[:, ::5][q]`: entry j is the score of *caption 5j* against *image q*, with relevance `M[5j, q]`.
# It ranks pairs that do not involve the query caption at all — change the query's words and that block stays
# the same. The intended entry is the score of caption 5q against image j, with relevance `M[5q, j]`
# (what `mixed_ndcg` uses).

# %%
banner("5d. transposed T2IT block")
scores_t2i = t @ v.T  # (5N, N), caption -> image
q = 3
official_block = scores_t2i.T[:, ::5][q]  # (N,)
intended_block = scores_t2i[rel.first[q]]  # (N,)
print("official block, first 5 :", official_block[:5])
print("intended block, first 5 :", intended_block[:5])
same = np.allclose(official_block, v[q] @ t[rel.first].T)  # image q scored against every image's first caption
print("official block == image q against every first caption (the query caption plays no part):", same)
assert same and not np.allclose(official_block, intended_block)

# %% [markdown]
# **(e) The query left in its own mixed gallery.** Official I2IT / T2IT keep the query in the gallery with
# cosine 1 and relevance 1, a guaranteed perfect first hit that inflates every mixed NDCG.

# %%
banner("5e. self-match")
i2it = np.concatenate([v @ v.T, v @ t.T], axis=1)
i2it_rel = np.concatenate([M[rel.first], M.T], axis=1)
kept = ndcg_at_k(i2it, i2it_rel, 10).mean()
removed = ndcg_at_k(i2it, i2it_rel, 10, exclude=np.arange(N_TEST)).mean()
print(f"I2IT NDCG@10 x 100: query kept {100 * kept:.1f}, query removed {100 * removed:.1f}")
assert kept > removed
assert np.isclose(100 * removed, mixed["rouge_i2it@10"])  # what mixed_ndcg reports

# %% [markdown]
# **(f) Ties.** The official code breaks ties in whatever order `np.argsort` leaves them. A collapsed model that
# gives every pair the same score then gets an arbitrary number. Our rule is explicit: optimistic by default
# (ties in the system's favour), pessimistic on request; if the two differ, the scores are degenerate.

# %%
banner("5f. ties")
collapsed = np.zeros((N_TEST, 5 * N_TEST))
best = retrieval_recall(collapsed, txt2img)["r_mean"]
worst = retrieval_recall(collapsed, txt2img, ties="pessimistic")["r_mean"]
print(f"a collapsed model: r_mean {best:.1f} (optimistic) vs {worst:.1f} (pessimistic) — degenerate scores")

# %% [markdown]
# ## Exercises
#
# 1. Lower the image noise in section 0 to 0.2. Which numbers move most: cosine recall, re-ranked recall, I2I
#    NDCG? Why does the re-ranking help less then?
# 2. Compute T2T NDCG@10 of query 0 by hand, as in section 3 (the gallery is all captions but the query; the other
#    four captions of its image stay in, with relevance 1).
# 3. Subtract the mean image embedding from `v` and the mean caption embedding from `t` (then re-normalise). What
#    happens to the modality gap, the share of images in the I2IT top 10, and mixed NDCG?
# 4. Build the official T2IT row for query 3 in full (text block with the query kept, plus the transposed image
#    block) and compute its NDCG@10 next to `mixed_ndcg`'s.
# 5. With `attr` relevance (`rel.attr`, from the true scene attributes), is the stand-in retriever's I2I ranking
#    better or worse than with ROUGE-L relevance? What does each relevance reward?
