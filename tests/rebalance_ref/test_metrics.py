"""Metrics against small loop implementations written here, hand-computed values, ties, chunking, bad input."""

import math

import numpy as np
import pytest

from rebalance_ref import metrics
from rebalance_ref.metrics import (
    alignment,
    modality_gap,
    ndcg_at_k,
    retrieval_ranks,
    retrieval_recall,
    rouge_l,
    rouge_relevance,
    uniformity,
)

# ---------------------------------------------------------------------------------------------------------------
# Loop oracles
# ---------------------------------------------------------------------------------------------------------------


def official_style_recall(sim_i2t, sim_t2i, txt2img, ks=(1, 5, 10)):
    """The official itm_eval loops: argsort each query, find where the positives land (tie-free data only)."""
    img2txt = [np.flatnonzero(txt2img == i) for i in range(sim_i2t.shape[0])]
    i2t = np.zeros(sim_i2t.shape[0])
    for index, score in enumerate(sim_i2t):
        inds = np.argsort(score)[::-1]
        i2t[index] = min(np.where(inds == i)[0][0] for i in img2txt[index])
    t2i = np.zeros(sim_t2i.shape[0])
    for index, score in enumerate(sim_t2i):
        inds = np.argsort(score)[::-1]
        t2i[index] = np.where(inds == txt2img[index])[0][0]
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * len(np.where(ranks < k)[0]) / len(ranks)
    return out


def loop_ndcg(scores, relevance, k, exclude=None, optimistic=True):
    """Per query: remove the excluded item, order by (score desc, relevance desc/asc), sum gains by hand."""
    out = []
    for q in range(scores.shape[0]):
        items = [j for j in range(scores.shape[1]) if exclude is None or j != exclude[q]]
        sign = -1 if optimistic else 1
        ranked = sorted(items, key=lambda j: (-scores[q, j], sign * relevance[q, j]))
        ideal = sorted((relevance[q, j] for j in items), reverse=True)
        dcg = sum(relevance[q, j] / math.log2(r + 2) for r, j in enumerate(ranked[:k]))
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal[:k]))
        out.append(dcg / idcg if idcg > 0 else 0.0)
    return np.array(out)


def loop_uniformity(x, t):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    vals = [math.exp(-t * float(np.sum((x[i] - x[j]) ** 2))) for i in range(len(x)) for j in range(i + 1, len(x))]
    return math.log(sum(vals) / len(vals))


def frozen(*arrays):
    """Read-only copies: any write inside a metric raises."""
    out = []
    for a in arrays:
        a = np.array(a)
        a.setflags(write=False)
        out.append(a)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Recall
# ---------------------------------------------------------------------------------------------------------------


def _random_retrieval(rng, n_img=13):
    counts = rng.integers(1, 5, size=n_img)  # 1 to 4 captions per image
    txt2img = rng.permutation(np.repeat(np.arange(n_img), counts))
    v = rng.normal(size=(n_img, 6))
    t = v[txt2img] + 1.5 * rng.normal(size=(txt2img.size, 6))
    return v @ t.T, txt2img


def test_recall_matches_official_style_loop():
    rng = np.random.default_rng(0)
    sim, txt2img = _random_retrieval(rng)
    sim_t2i = sim.T + 0.3 * rng.normal(size=sim.T.shape)
    for ks in [(1, 5, 10), (2, 3)]:
        got = retrieval_recall(sim, txt2img, ks)
        want = official_style_recall(sim, sim.T, txt2img, ks)
        assert {k: got[k] for k in want} == pytest.approx(want)
        assert got["i2t_mean"] == pytest.approx(np.mean([want[f"i2t_r{k}"] for k in ks]))
        assert got["r_mean"] == pytest.approx(np.mean(list(want.values())))
    got = retrieval_recall(sim, txt2img, sim_t2i=sim_t2i)
    want = official_style_recall(sim, sim_t2i, txt2img)
    assert {k: got[k] for k in want} == pytest.approx(want)


def test_recall_perfect_and_hand_computed():
    txt2img = np.array([0, 0, 1, 2])
    perfect = np.array([[5.0, 4.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 3.0]])
    assert retrieval_recall(perfect, txt2img, ks=(1,))["r_mean"] == 100.0
    sim = np.array([
        [0.1, 0.9, 0.5, 0.2],   # image 0: its caption 1 is first -> rank 0
        [0.9, 0.8, 0.7, 0.1],   # image 1: caption 2 third -> rank 2
        [0.4, 0.3, 0.2, 0.1],   # image 2: caption 3 last -> rank 3
    ])
    i2t, t2i = retrieval_ranks(sim, txt2img)
    assert i2t.tolist() == [0, 2, 3]
    # columns: text 0 -> image 0 scores 0.1, beaten by 0.9 and 0.4 -> 2; text 1 -> 0; text 2 -> 0;
    # text 3 -> image 2 scores 0.1, beaten by 0.2 and tied with image 1's 0.1 -> 1 (optimistic), 2 (pessimistic)
    assert t2i.tolist() == [2, 0, 0, 1]
    assert retrieval_ranks(sim, txt2img, ties="pessimistic")[1].tolist() == [2, 0, 0, 2]
    r = retrieval_recall(sim, txt2img, ks=(1, 2))
    assert r["i2t_r1"] == pytest.approx(100 / 3) and r["i2t_r2"] == pytest.approx(100 / 3)
    assert r["t2i_r1"] == 50.0 and r["t2i_r2"] == 75.0


def test_recall_tie_rules():
    txt2img = np.array([0, 1, 2])
    flat = np.zeros((3, 3))  # a collapsed model: every score equal
    assert retrieval_recall(flat, txt2img, ks=(1,))["r_mean"] == 100.0
    assert retrieval_recall(flat, txt2img, ks=(1,), ties="pessimistic")["r_mean"] == 0.0
    i2t, t2i = retrieval_ranks(flat, txt2img, ties="pessimistic")
    assert i2t.tolist() == [2, 2, 2] and t2i.tolist() == [2, 2, 2]
    # Two captions of image 0 tie at the top with one other text: optimistic rank 0, pessimistic rank 2.
    sim = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    i2t, _ = retrieval_ranks(sim, np.array([0, 0, 1, 1]))
    assert i2t[0] == 0
    i2t, _ = retrieval_ranks(sim, np.array([0, 0, 1, 1]), ties="pessimistic")
    assert i2t[0] == 2


def test_recall_chunked_equals_unchunked_and_inputs_untouched():
    rng = np.random.default_rng(1)
    sim, txt2img = _random_retrieval(rng, n_img=17)
    sim = np.round(sim, 1)  # plenty of ties
    sim_f, t2i_f = frozen(sim, txt2img)
    for ties in ("optimistic", "pessimistic"):
        whole = retrieval_ranks(sim_f, t2i_f, ties=ties)
        for chunk in (1, 4, 1000):
            parts = retrieval_ranks(sim_f, t2i_f, ties=ties, chunk=chunk)
            assert all(np.array_equal(a, b) for a, b in zip(whole, parts, strict=True))
    assert np.array_equal(sim_f, sim) and np.array_equal(t2i_f, txt2img)


@pytest.mark.parametrize(
    "sim, txt2img, kwargs, match",
    [
        (np.zeros(4), [0, 0, 0, 0], {}, "sim_i2t: expected a 2-D array"),
        (np.array([[np.nan, 0.0]]), [0, 0], {}, "sim_i2t: expected finite values"),
        (np.zeros((2, 3)), [0, 1], {}, "txt2img: expected a 1-D array of length 3"),
        (np.zeros((2, 3)), [0, 1, 2], {}, r"txt2img: expected entries in \[0, 2\)"),
        (np.zeros((2, 3)), [0.0, 1.0, 1.0], {}, "txt2img: expected integers"),
        (np.zeros((3, 3)), [0, 1, 1], {}, "none for image 2"),
        (np.zeros((2, 2)), [0, 1], {"ks": (0, 1)}, "ks: expected an int >= 1"),
        (np.zeros((2, 2)), [0, 1], {"ks": ()}, "ks: expected"),
        (np.zeros((2, 2)), [0, 1], {"ties": "random"}, "ties: expected one of"),
        (np.zeros((2, 2)), [0, 1], {"sim_t2i": np.zeros((3, 2))}, r"sim_t2i: expected shape \(2, 2\)"),
        (np.zeros((2, 2)), [0, 1], {"chunk": 0}, "chunk: expected None or an int >= 1"),
    ],
)
def test_recall_bad_input(sim, txt2img, kwargs, match):
    with pytest.raises(ValueError, match=match):
        retrieval_recall(sim, np.asarray(txt2img), **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# NDCG
# ---------------------------------------------------------------------------------------------------------------


def test_ndcg_matches_loop_with_and_without_exclusion():
    rng = np.random.default_rng(2)
    scores, rel = rng.normal(size=(9, 30)), rng.random((9, 30))
    rel[rel < 0.4] = 0.0
    exclude = rng.integers(0, 30, size=9)
    for ex in (None, exclude):
        many = ndcg_at_k(scores, rel, (3, 10, 29, 30, 40), exclude=ex)
        for k, values in many.items():
            np.testing.assert_allclose(values, loop_ndcg(scores, rel, k, ex), rtol=0, atol=1e-12)
            np.testing.assert_array_equal(values, ndcg_at_k(scores, rel, k, exclude=ex))


def test_ndcg_hand_computed_values():
    rel = np.array([[3.0, 2.0, 0.0, 1.0]])
    assert ndcg_at_k(-np.arange(4.0)[None] + np.array([[0, 0, -9, 0]]), rel, 4)[0] == pytest.approx(1.0)
    # ranking 2, 3, 1, 0 (by score) gives gains 0, 1, 2, 3
    scores = np.array([[1.0, 2.0, 4.0, 3.0]])
    dcg = 0 / 1 + 1 / math.log2(3) + 2 / 2 + 3 / math.log2(5)
    idcg = 3 + 2 / math.log2(3) + 1 / 2
    assert ndcg_at_k(scores, rel, 4)[0] == pytest.approx(dcg / idcg)
    assert ndcg_at_k(scores, rel, 2)[0] == pytest.approx((1 / math.log2(3)) / (3 + 2 / math.log2(3)))
    # all-zero relevance gives 0; a perfect ranking gives 1 at every cut-off
    assert ndcg_at_k(scores, np.zeros((1, 4)), (1, 4)) == {1: pytest.approx([0.0]), 4: pytest.approx([0.0])}
    assert all(v[0] == pytest.approx(1.0) for v in ndcg_at_k(rel, rel, (1, 2, 3)).values())


def test_ndcg_removes_the_excluded_item_rather_than_zeroing_it():
    # The query (item 0) scores highest; all other scores are negative cosines.
    scores = np.array([[1.0, -0.1, -0.2, -0.3]])
    rel = np.array([[1.0, 0.0, 0.0, 1.0]])
    removed = ndcg_at_k(scores, rel, 1, exclude=np.array([0]))[0]
    assert removed == 0.0  # item 1 (irrelevant) is ranked first once the query is gone
    # The official masking (score 0, relevance 0) keeps the query on top of every negative cosine.
    zeroed_scores, zeroed_rel = scores.copy(), rel.copy()
    zeroed_scores[0, 0], zeroed_rel[0, 0] = 0.0, 0.0
    assert ndcg_at_k(zeroed_scores, zeroed_rel, 1)[0] == 0.0
    assert ndcg_at_k(scores, rel, 3, exclude=np.array([0]))[0] == pytest.approx(loop_ndcg(scores, rel, 3, [0])[0])
    # Removal also shrinks the ideal list: the excluded relevant item is not owed a place in it.
    perfect = np.array([[4.0, 3.0, 2.0, 1.0]])
    assert ndcg_at_k(perfect, np.array([[1.0, 1.0, 0.0, 0.0]]), 2, exclude=np.array([1]))[0] == pytest.approx(1.0)


def test_ndcg_ties_including_at_the_partition_boundary():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(12, 40)).astype(float)  # heavy ties everywhere, including at rank k
    rel = rng.integers(0, 4, size=(12, 40)).astype(float)
    exclude = rng.integers(0, 40, size=12)
    for optimistic, ties in ((True, "optimistic"), (False, "pessimistic")):
        got = ndcg_at_k(scores, rel, (1, 5, 10), exclude=exclude, ties=ties)
        for k, values in got.items():
            np.testing.assert_allclose(values, loop_ndcg(scores, rel, k, exclude, optimistic), atol=1e-12)
    flat = np.zeros((1, 4))
    rel = np.array([[0.0, 1.0, 0.0, 1.0]])
    assert ndcg_at_k(flat, rel, 2)[0] == pytest.approx(1.0)
    assert ndcg_at_k(flat, rel, 2, ties="pessimistic")[0] == 0.0


def test_ndcg_chunked_equals_unchunked_and_inputs_untouched():
    rng = np.random.default_rng(4)
    scores, rel, ex = frozen(rng.normal(size=(11, 25)).round(1), rng.random((11, 25)), rng.integers(0, 25, 11))
    whole = ndcg_at_k(scores, rel, (5, 10), exclude=ex)
    for chunk in (1, 3, 100):
        parts = ndcg_at_k(scores, rel, (5, 10), exclude=ex, chunk=chunk)
        assert all(np.array_equal(whole[k], parts[k]) for k in whole)
    assert all(((0 <= v) & (v <= 1)).all() for v in whole.values())
    ints = ndcg_at_k(np.arange(12).reshape(3, 4), np.ones((3, 4), dtype=np.int64), 2)  # integer inputs work
    np.testing.assert_allclose(ints, 1.0)


@pytest.mark.parametrize(
    "scores, rel, k, kwargs, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), 1, {}, "relevance: expected the shape of scores"),
        (np.zeros((2, 3)), -np.ones((2, 3)), 1, {}, "relevance: expected values >= 0"),
        (np.full((2, 3), np.inf), np.zeros((2, 3)), 1, {}, "scores: expected finite values"),
        (np.zeros((2, 3)), np.full((2, 3), np.nan), 1, {}, "relevance: expected finite values"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 0, {}, "k: expected an int >= 1"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 2.5, {}, "k: expected an int >= 1"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 1, {"exclude": np.array([0, 3])}, r"exclude: expected entries in"),
        (np.zeros((2, 3)), np.zeros((2, 3)), 1, {"exclude": np.array([0])}, "exclude: expected a 1-D array of len"),
        (np.zeros((2, 1)), np.zeros((2, 1)), 1, {"exclude": np.array([0, 0])}, "scores: expected at least 2 gallery"),
        (np.zeros((2, 0)), np.zeros((2, 0)), 1, {}, "scores: expected a non-empty array"),
        (np.array([["a", "b"]]), np.zeros((1, 2)), 1, {}, "scores: expected a numeric array"),
    ],
)
def test_ndcg_bad_input(scores, rel, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ndcg_at_k(scores, rel, k, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------------------------


def test_rouge_l_hand_computed():
    beta2 = 1.2**2
    # one reference: LCS("a red circle", "a big red square circle") = 3 -> P = 1, R = 3/5
    p, r = 1.0, 3 / 5
    assert rouge_l("A red circle.", "a big red square circle") == pytest.approx((1 + beta2) * p * r / (r + beta2 * p))
    # best precision and best recall come from different references (TERAN / COCO toolkit form): F = 1
    assert rouge_l("a red circle", ["a red circle on the left side", "red"]) == pytest.approx(1.0)
    assert rouge_l("red circle", ["RED, circle!"]) == pytest.approx(1.0)
    assert rouge_l("", ["a"]) == 0.0 and rouge_l("a", [""]) == 0.0 and rouge_l("a b", ["c d"]) == 0.0
    # a larger beta weighs recall more: P = 1, R = 1/3
    assert rouge_l("a", ["a b c"], beta=3.0) == pytest.approx(10 * (1 / 3) / (1 / 3 + 9))


def _random_captions(rng, n, low, high, vocab=("a", "the", "red", "blue", "circle", "square", "left", "of", "big")):
    return [" ".join(rng.choice(vocab, size=rng.integers(low, high))) for _ in range(n)]


def test_rouge_relevance_equals_rouge_l():
    rng = np.random.default_rng(5)
    captions = _random_captions(rng, 25, 0, 9)
    captions += captions[:5] + ["Red, circle!", "red circle"]  # duplicates and normalisation-equal captions
    images = [_random_captions(rng, int(rng.integers(1, 4)), 0, 12) for _ in range(8)]
    images += [["", "a"], _random_captions(rng, 2, 60, 70), _random_captions(rng, 1, 130, 140)]  # > 64 and > 128 words
    captions_f = tuple(captions)
    want = np.array([[rouge_l(c, refs) for refs in images] for c in captions])
    got = rouge_relevance(captions_f, images)
    assert got.dtype == np.float32 and got.shape == (len(captions), len(images))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(rouge_relevance(captions, images, chunk=3), got, rtol=0, atol=0)
    np.testing.assert_allclose(rouge_relevance(captions, images, beta=2.0)[:, :3],
                               [[rouge_l(c, refs, beta=2.0) for refs in images[:3]] for c in captions], atol=1e-6)
    assert captions_f == tuple(captions)


def test_rouge_relevance_gives_one_for_own_image():
    rng = np.random.default_rng(6)
    images = [_random_captions(rng, 5, 3, 10) for _ in range(6)]
    flat = [c for refs in images for c in refs]
    m = rouge_relevance(flat, images)
    np.testing.assert_allclose(m[np.arange(30), np.repeat(np.arange(6), 5)], 1.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rouge_l(3, ["a"]), "candidate: expected a str"),
        (lambda: rouge_l("a", []), "references: expected a str or a non-empty sequence"),
        (lambda: rouge_l("a", ["a", 2]), "references: expected"),
        (lambda: rouge_l("a", ["a"], beta=0), "beta: expected a positive scalar"),
        (lambda: rouge_relevance("abc", [["a"]]), "captions: expected a sequence of str"),
        (lambda: rouge_relevance(["a"], [["a"], []]), r"image_captions\[1\]: expected"),
        (lambda: rouge_relevance(["a"], "a"), "image_captions: expected a sequence"),
        (lambda: rouge_relevance(["a"], [["a"]], beta=float("nan")), "beta: expected a finite scalar"),
    ],
)
def test_rouge_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------------------------


def test_modality_gap_and_alignment_hand_values():
    e1, e2 = np.eye(3)[[0]].repeat(4, 0), np.eye(3)[[1]].repeat(4, 0)
    assert modality_gap(e1, 3 * e1) == pytest.approx(0.0)
    assert modality_gap(5 * e1, e2[:2]) == pytest.approx(math.sqrt(2))
    assert alignment(e1, e2) == pytest.approx(2.0)  # ||e1 - e2||^2 = 2
    assert alignment(e1, e2, alpha=1) == pytest.approx(math.sqrt(2))
    assert alignment(e1, 2 * e1) == pytest.approx(0.0)


def test_uniformity_matches_loop_and_chunks():
    rng = np.random.default_rng(7)
    x = frozen(rng.normal(size=(15, 4)))[0]
    for t in (2, 0.5):
        assert uniformity(x, t) == pytest.approx(loop_uniformity(x, t), abs=1e-12)
        assert uniformity(x, t, chunk=2) == pytest.approx(uniformity(x, t), abs=1e-12)
    assert uniformity(np.array([[1.0, 0.0], [-2.0, 0.0]])) == pytest.approx(-8.0)  # squared distance 4, t = 2
    assert uniformity(np.array([[1.0, 0.0], [3.0, 0.0]]), t=7) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: modality_gap(np.zeros((2, 3)), np.zeros((2, 4))), "v and t: expected the same width"),
        (lambda: modality_gap(np.full((2, 3), np.nan), np.zeros((2, 3))), "v: expected finite values"),
        (lambda: alignment(np.ones((2, 3)), np.ones((3, 3))), "v and t: expected the same shape"),
        (lambda: alignment(np.ones((2, 3)), np.ones((2, 3)), alpha=0), "alpha: expected a positive scalar"),
        (lambda: uniformity(np.ones((1, 3))), "x: expected at least 2 rows"),
        (lambda: uniformity(np.ones((2, 3)), t=-1), "t: expected a positive scalar"),
        (lambda: uniformity(np.ones(3)), "x: expected a 2-D array"),
    ],
)
def test_diagnostics_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rouge_relevance_without_numpy_bitwise_count(monkeypatch):
    rng = np.random.default_rng(8)
    captions = _random_captions(rng, 12, 0, 9)
    images = [_random_captions(rng, 2, 1, 70) for _ in range(4)]
    want = rouge_relevance(captions, images)
    monkeypatch.delattr(np, "bitwise_count", raising=False)  # the NumPy < 2 path: popcount by unpacking bytes
    np.testing.assert_array_equal(rouge_relevance(captions, images), want)


def test_lexicographic_scores_break_primary_ties_by_the_secondary_key():
    primary = np.array([[1.0, 1.0, 1.0, 0.0], [2.0, 1.0, 3.0, 3.0]])
    secondary = np.array([[0.1, 0.3, 0.2, 0.9], [0.5, 0.5, 0.1, 0.1]])
    scores = metrics.lexicographic_scores(primary, secondary)
    assert np.argsort(-scores[0], kind="stable").tolist() == [1, 2, 0, 3]  # the tied logits ordered by cosine
    assert scores[1, 2] == scores[1, 3] > scores[1, 0] > scores[1, 1]      # an exact tie of both keys stays a tie
    # a constant head (every logit equal) then ranks exactly as the cosine does, not every candidate first
    cos = np.random.default_rng(0).standard_normal((5, 7))
    flat = metrics.lexicographic_scores(np.zeros((5, 7)), cos)
    assert (np.argsort(flat, axis=1) == np.argsort(cos, axis=1)).all()
    with pytest.raises(ValueError, match="same shape"):
        metrics.lexicographic_scores(primary, secondary[:, :3])
