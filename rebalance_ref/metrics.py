"""Retrieval metrics of the evaluation protocol (docs/design.md §3): cross-modal recall, NDCG with graded relevance,
ROUGE-L relevance, and the embedding-space diagnostics (modality gap, alignment, uniformity).

Every function here is vectorised and, where a full query x gallery temporary could be large, works through the
queries in chunks whose size bounds memory (`chunk`, in rows; by default about 4 M elements per temporary for
recall and uniformity, 256 K for ranking, whose partitions run faster on cache-sized blocks).
No function modifies its inputs. Metrics are plain values, not `(value, grads)`: nothing here is trained.

Tie rule (the same in every ranking metric): ties count in the system's favour by default ("optimistic").
For recall, the rank of a positive is the number of gallery items with a *strictly* higher score; for NDCG,
items with equal scores are ordered by decreasing relevance. `ties="pessimistic"` gives the other bound
(items with an equal score rank ahead of the positive / equal scores ordered by increasing relevance). With
continuous scores ties have probability zero and both agree; when they differ, the scores are degenerate
(e.g. a collapsed model, whose optimistic scores are perfect). The official metric code breaks ties by
whatever order `np.argsort` happens to produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.special import logsumexp

from rebalance_ref import checks
from rebalance_ref.relations import normalize
from rebalance_ref.text import words

# Elements per (rows x gallery) temporary; chunks of queries are sized to stay near this.
_CHUNK_ELEMENTS = 1 << 22
# Elements per chunk when ranking (NDCG): cache-sized blocks partition faster than large ones.
_RANK_ELEMENTS = 1 << 18
# Candidate x reference pairs per tile of the bit-parallel LCS (about 2 MB of bit vectors, cache-sized).
_LCS_TILE = 1 << 18
# Candidate x reference pairs per chunk of images in rouge_relevance (bounds its float temporaries, ~8 MB each).
_ROUGE_PAIRS = 1 << 20
_TIES = ("optimistic", "pessimistic")


# --------------------------------------------------------------------------------------------------------------
# Input validation (each raises ValueError naming the argument and what was expected)
# --------------------------------------------------------------------------------------------------------------


def _matrix(name: str, x, layout: str) -> np.ndarray:
    """`x` as a non-empty, finite, real 2-D array (float; never written to)."""
    a = checks.as_float_array(name, x)
    checks.array(name, a, 2, layout)
    return a


def _index_vector(name: str, x, length: int, upper: int) -> np.ndarray:
    """`x` as an int64 vector of `length` entries, each in [0, upper)."""
    a = np.asarray(x)
    if a.ndim != 1 or a.shape[0] != length:
        raise ValueError(f"{name}: expected a 1-D array of length {length}, got shape {a.shape}")
    if a.dtype == bool or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: expected integers, got dtype {a.dtype}")
    if length and (a.min() < 0 or a.max() >= upper):
        raise ValueError(f"{name}: expected entries in [0, {upper}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64, copy=False)


def _cutoffs(name: str, k) -> tuple[tuple[int, ...], bool]:
    """Cut-offs as a sorted tuple of distinct ints >= 1, and whether a single int was given."""
    single = isinstance(k, (int, np.integer)) and not isinstance(k, bool)
    values = [k] if single else (list(k) if isinstance(k, Iterable) else None)
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 for v in values):
        raise ValueError(f"{name}: expected an int >= 1 or a non-empty sequence of them, got {k!r}")
    return tuple(sorted({int(v) for v in values})), single


def _ties(ties: str) -> bool:
    """True for the optimistic rule."""
    if ties not in _TIES:
        raise ValueError(f"ties: expected one of {_TIES}, got {ties!r}")
    return ties == "optimistic"


def _chunk_rows(chunk: int | None, n_cols: int, elements: int = _CHUNK_ELEMENTS) -> int:
    """Rows per chunk: `chunk` if given, else as many as keep a (rows x n_cols) temporary near `elements`."""
    if chunk is None:
        return max(1, elements // max(1, n_cols))
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk: expected None or an int >= 1, got {chunk!r}")
    return int(chunk)


# --------------------------------------------------------------------------------------------------------------
# Cross-modal recall
# --------------------------------------------------------------------------------------------------------------


def retrieval_ranks(sim_i2t, txt2img, *, sim_t2i=None, ties: str = "optimistic", chunk: int | None = None):
    """0-based rank of the first relevant item for every query, by counting (no sort).

    sim_i2t: (N_img, N_txt) scores, higher = more similar. txt2img: int (N_txt,) image index of each text; every
    image needs at least one text. sim_t2i: optional (N_txt, N_img) scores for the text->image direction (the
    paper's ITM re-scoring yields a different matrix per direction); default sim_i2t transposed.

    Returns (i2t, t2i): int64 (N_img,) rank of each image's best-ranked caption, and int64 (N_txt,) rank of each
    text's image. Optimistic: rank = #{gallery items scoring strictly higher than the positive}; pessimistic:
    #{other gallery items scoring at least as high}.
    """
    s = _matrix("sim_i2t", sim_i2t, "(N_img, N_txt)")
    n_img, n_txt = s.shape
    t2i = _index_vector("txt2img", txt2img, n_txt, n_img)
    missing = np.flatnonzero(np.bincount(t2i, minlength=n_img) == 0)
    if missing.size:
        raise ValueError(f"txt2img: expected at least one text for every image, got none for image {missing[0]}")
    optimistic = _ties(ties)
    if sim_t2i is None:
        st = s.T
    else:
        st = _matrix("sim_t2i", sim_t2i, "(N_txt, N_img)")
        if st.shape != (n_txt, n_img):
            raise ValueError(f"sim_t2i: expected shape {(n_txt, n_img)} (N_txt, N_img), got {st.shape}")

    # Image -> text: an image's best positive has the highest score among its captions, best[i] (N_img,).
    best = np.full(n_img, -np.inf)
    np.maximum.at(best, t2i, s[t2i, np.arange(n_txt)])
    i2t = np.empty(n_img, dtype=np.int64)
    rows = _chunk_rows(chunk, n_txt)
    for a in range(0, n_img, rows):
        block, b = s[a:a + rows], best[a:a + rows, None]  # (C, N_txt), (C, 1)
        i2t[a:a + rows] = (block > b).sum(1) if optimistic else (block >= b).sum(1) - 1

    # Text -> image: the score of each text's own image, pos[j] (N_txt,).
    pos = st[np.arange(n_txt), t2i]
    t2i_rank = np.empty(n_txt, dtype=np.int64)
    rows = _chunk_rows(chunk, n_img)
    for a in range(0, n_txt, rows):
        block, p = st[a:a + rows], pos[a:a + rows, None]  # (C, N_img), (C, 1)
        t2i_rank[a:a + rows] = (block > p).sum(1) if optimistic else (block >= p).sum(1) - 1
    return i2t, t2i_rank


def lexicographic_scores(primary, secondary) -> np.ndarray:
    """Scores whose row-wise order is the order of `primary`, ties broken by `secondary` (both higher = better):
    float64 (Q, G), each row's entries the positions 0..G-1 of its items in ascending (primary, secondary) order,
    equal pairs sharing one value. The paper's ITM re-ranking needs it: a head that gives several candidates the
    same logit (one that never left its label prior gives them all the same) must not rank the positive first by
    the optimistic tie rule; the candidates' cosine order decides instead.  primary, secondary: (Q, G)."""
    a = _matrix("primary", primary, "(Q, G)")
    b = _matrix("secondary", secondary, "(Q, G)")
    if a.shape != b.shape:
        raise ValueError(f"primary and secondary: expected the same shape, got {a.shape} and {b.shape}")
    out = np.empty(a.shape, dtype=np.float64)
    for row in range(a.shape[0]):
        order = np.lexsort((b[row], a[row]))                              # ascending: primary, then secondary
        pa, pb = a[row, order], b[row, order]
        new = np.concatenate([[True], (pa[1:] != pa[:-1]) | (pb[1:] != pb[:-1])])
        out[row, order] = np.flatnonzero(new)[np.cumsum(new) - 1]         # equal pairs share their first position
    return out


def retrieval_recall(sim_i2t, txt2img, ks=(1, 5, 10), *, sim_t2i=None, ties: str = "optimistic",
                     chunk: int | None = None) -> dict[str, float]:
    """Cross-modal Recall@K in percent: i2t_r{k}, t2i_r{k} for each k, i2t_mean, t2i_mean and r_mean.

    i2t R@K is the share of images whose best-ranked caption (of any number) is in the top K; t2i R@K the share
    of texts whose image is in the top K. The means average over `ks`; r_mean = (i2t_mean + t2i_mean) / 2, i.e.
    the average of all 2·len(ks) recalls. Ranks and ties as in `retrieval_ranks`.
    """
    cutoffs, _ = _cutoffs("ks", ks)
    i2t, t2i = retrieval_ranks(sim_i2t, txt2img, sim_t2i=sim_t2i, ties=ties, chunk=chunk)
    out: dict[str, float] = {}
    for direction, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in cutoffs:
            out[f"{direction}_r{k}"] = 100.0 * float(np.mean(ranks < k))
        out[f"{direction}_mean"] = float(np.mean([out[f"{direction}_r{k}"] for k in cutoffs]))
    out["r_mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2.0
    return out


# --------------------------------------------------------------------------------------------------------------
# NDCG with graded relevance
# --------------------------------------------------------------------------------------------------------------


def _ranked_top(neg: np.ndarray, rel: np.ndarray, sign: float, kmax: int) -> np.ndarray:
    """Gallery indices (C, kmax) of each row's kmax best items, in rank order.

    neg: (C, G) negated scores (ascending = better); ties are ordered by ascending sign·rel (rel: (C, G)).
    Top-k by `argpartition`; rows whose k-th value is tied with items left outside the partition are redone
    with a full sort.
    """
    g = neg.shape[1]
    if kmax >= g:
        return np.lexsort((sign * rel, neg), axis=1)
    part = np.argpartition(neg, kmax - 1, axis=1)[:, :kmax]  # (C, kmax), unordered
    part_neg = np.take_along_axis(neg, part, 1)
    order = np.lexsort((sign * np.take_along_axis(rel, part, 1), part_neg), axis=1)
    top = np.take_along_axis(part, order, 1)
    # The partition picked arbitrarily among items tied with the k-th score; redo those rows exactly.
    redo = np.flatnonzero(np.count_nonzero(neg <= part_neg.max(1, keepdims=True), axis=1) > kmax)
    if redo.size:
        top[redo] = np.lexsort((sign * rel[redo], neg[redo]), axis=1)[:, :kmax]
    return top


def ndcg_at_k(scores, relevance, k, exclude=None, *, ties: str = "optimistic", chunk: int | None = None):
    """Normalised discounted cumulative gain at cut-off k, one value in [0, 1] per query.

    scores: (Q, G) higher = ranked first. relevance: (Q, G) graded relevance >= 0 (linear gain).
    exclude: None or int (Q,): the gallery index removed from query q's row (the query itself), removed
    from both the ranking and the ideal list, not zeroed. k: an int, or a sequence of ints to get
    {k: array} from one ranking (e.g. `ndcg_at_k(s, r, (10, 20, 50))`).

    DCG@k = sum_{r=1..k} rel(item at rank r) / log2(r + 1); the ideal DCG@k uses the row's relevances sorted
    in decreasing order over the whole (remaining) gallery; NDCG = DCG / IDCG. A row whose relevance is all zero
    has IDCG = 0 and gets NDCG 0. If k exceeds the gallery size, the whole gallery is ranked.
    Returns float64 (Q,) for an int k, else a dict {k: float64 (Q,)}.
    """
    s = _matrix("scores", scores, "(Q, G)")
    r = _matrix("relevance", relevance, "(Q, G)")
    if r.shape != s.shape:
        raise ValueError(f"relevance: expected the shape of scores {s.shape}, got {r.shape}")
    if (r < 0).any():
        raise ValueError("relevance: expected values >= 0 (linear gain), got a negative entry")
    cutoffs, single = _cutoffs("k", k)
    q, g = s.shape
    ex = None if exclude is None else _index_vector("exclude", exclude, q, g)
    if ex is not None and g < 2:
        raise ValueError(f"scores: expected at least 2 gallery columns when exclude is given, got {g}")
    optimistic = _ties(ties)
    kmax = min(cutoffs[-1], g)
    # discount[r-1] = 1 / log2(r + 1) for ranks r = 1..kmax
    discount = 1.0 / np.log2(np.arange(2, kmax + 2, dtype=np.float64))
    out = np.empty((len(cutoffs), q))
    rows = _chunk_rows(chunk, g, _RANK_ELEMENTS)
    for a in range(0, q, rows):
        neg = np.negative(s[a:a + rows])  # (C, G) a fresh copy: ascending = better
        rel = r[a:a + rows]  # (C, G) a view, copied before any write
        if ex is not None:
            # Removal: the excluded item sorts after every real item and adds no gain to either list.
            rel = rel.copy()
            at = (np.arange(neg.shape[0]), ex[a:a + rows])
            neg[at] = np.inf
            rel[at] = 0
        top = _ranked_top(neg, rel, -1.0 if optimistic else 1.0, kmax)  # (C, kmax)
        dcg = np.cumsum(np.take_along_axis(rel, top, 1) * discount, axis=1)  # (C, kmax): DCG@1..kmax
        ideal = np.sort(np.partition(rel, g - kmax, axis=1)[:, g - kmax:] if kmax < g else rel, axis=1)[:, ::-1]
        idcg = np.cumsum(ideal * discount, axis=1)  # (C, kmax)
        for i, cut in enumerate(cutoffs):
            d, ideal_d = dcg[:, min(cut, g) - 1], idcg[:, min(cut, g) - 1]
            ratio = np.divide(d, ideal_d, out=np.zeros_like(d), where=ideal_d > 0)
            out[i, a:a + rows] = np.minimum(ratio, 1.0)  # rounding can overshoot 1 by an ulp
    return out[0] if single else {cut: out[i] for i, cut in enumerate(cutoffs)}


# --------------------------------------------------------------------------------------------------------------
# ROUGE-L relevance
# --------------------------------------------------------------------------------------------------------------


def _rouge_f(p, r, beta: float):
    """F-measure of best precision p and best recall r: (1 + β²)·p·r / (r + β²·p), and 0 where p·r = 0."""
    p, r = np.asarray(p, dtype=np.float64), np.asarray(r, dtype=np.float64)
    den = r + beta * beta * p
    return np.divide((1 + beta * beta) * p * r, den, out=np.zeros(np.broadcast(p, r).shape), where=p * r > 0)


def _lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence, by the textbook dynamic programme (one row at a time)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _references(name: str, refs) -> list[str]:
    refs = [refs] if isinstance(refs, str) else refs
    if not isinstance(refs, Sequence) or len(refs) == 0 or not all(isinstance(x, str) for x in refs):
        raise ValueError(f"{name}: expected a str or a non-empty sequence of str")
    return list(refs)


def rouge_l(candidate: str, references, beta: float = 1.2) -> float:
    """Multi-reference ROUGE-L F-score of `candidate` against `references` (a str or a list of str).

    Words come from `rebalance_ref.text.words`. As in the COCO caption toolkit used by TERAN's relevance
    matrices, the best precision and the best recall are taken separately over the references (possibly from
    different ones): P = max_r LCS(c, r)/|c|, R = max_r LCS(c, r)/|r|, F = (1+β²)PR/(R+β²P). An empty
    candidate scores 0; an empty reference contributes P = R = 0.
    """
    if not isinstance(candidate, str):
        raise ValueError(f"candidate: expected a str, got {type(candidate).__name__}")
    refs = _references("references", references)
    beta = checks.scalar("beta", beta, positive=True)
    c = words(candidate)
    if not c:
        return 0.0
    p = r = 0.0
    for ref in refs:
        w = words(ref)
        if w:
            lcs = _lcs_length(c, w)
            p, r = max(p, lcs / len(c)), max(r, lcs / len(w))
    return float(_rouge_f(p, r, beta))


def _popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.bitwise_count(x)
    bytes_ = x[..., None].view(np.uint8)
    return np.unpackbits(bytes_, axis=-1).sum(-1, dtype=np.uint8)


def _lcs_grid(cands: np.ndarray, refs: list[np.ndarray], n_words: int) -> np.ndarray:
    """LCS lengths of every candidate with every reference, bit-parallel: int32 (Uc, R).

    cands: int64 (Uc, Lc) word ids in [0, n_words), padded with -1, rows sorted by decreasing length;
    refs: R arrays of word ids.
    Each reference's match sets are bit masks (bit j set where word j of the reference equals a word), and one
    pass over the candidate's words updates a bit vector V per pair (Hyyrö 2004):
        U = V & M[w];  V = (V + U) | (V & ~U);   LCS = number of zero bits of V among the reference's positions.
    Vectorised over all pairs; the loop runs over candidate positions and 64-bit blocks of the reference.
    """
    n_refs = len(refs)
    lens = np.array([len(x) for x in refs], dtype=np.int64)
    blocks = max(1, int(-(-lens.max() // 64)) if n_refs else 1)
    # Local vocabulary of these references; candidate words absent from it (or padding) map to the last row, 0.
    vocab, inverse = np.unique(np.concatenate(refs + [np.empty(0, np.int64)]), return_inverse=True)
    table = np.zeros((blocks, vocab.size + 1, n_refs), dtype=np.uint64)  # (blocks, V+1, R) match masks
    ref_of = np.repeat(np.arange(n_refs), lens)
    pos = np.concatenate([np.arange(n) for n in lens] + [np.empty(0, np.int64)])
    np.bitwise_or.at(table, (pos // 64, inverse, ref_of), np.left_shift(np.uint64(1), (pos % 64).astype(np.uint64)))
    to_local = np.full(n_words + 1, vocab.size, dtype=np.int64)  # global id -> local id; the last entry is -1
    to_local[vocab] = np.arange(vocab.size)
    local = to_local[cands]  # (Uc, Lc)

    lengths = (cands >= 0).sum(1)  # (Uc,) in decreasing order
    out = np.empty((cands.shape[0], n_refs), dtype=np.int32)
    tile = max(1, _LCS_TILE // max(1, n_refs))  # candidates per tile: the bit vectors stay in cache
    for a in range(0, cands.shape[0], tile):
        out[a:a + tile] = _bit_lcs(table, local[a:a + tile], lengths[a:a + tile], lens)
    return out


def _bit_lcs(table: np.ndarray, local: np.ndarray, lengths: np.ndarray, ref_lens: np.ndarray) -> np.ndarray:
    """The bit-parallel pass of `_lcs_grid` for one tile of candidates: int32 (n, R).

    table: uint64 (blocks, V+1, R) match masks; local: (n, Lc) local word ids (V = no match), rows by decreasing
    length; lengths (n,); ref_lens (R,).
    """
    blocks = table.shape[0]
    v = np.full((blocks, local.shape[0], table.shape[2]), np.iinfo(np.uint64).max, dtype=np.uint64)  # (blocks, n, R)
    for i in range(local.shape[1]):
        n = int((lengths > i).sum())  # the candidates that still have a word at position i: a prefix
        carry = None
        for b in range(blocks):  # V + U, with the carry propagated across 64-bit blocks
            vb = v[b, :n]  # (n, R) view, updated in place
            ub = vb & table[b][local[:n, i]]
            total = vb + ub
            last = b == blocks - 1
            new_carry = None if last else total < vb
            if carry is not None:
                total += carry
                if not last:
                    new_carry |= carry & (total == 0)
            vb ^= ub  # V & ~U, since U is a subset of V
            vb |= total
            carry = new_carry
    zeros = np.zeros(v.shape[1:], dtype=np.int32)
    for b in range(blocks):
        width = np.clip(ref_lens - 64 * b, 0, 64)  # (R,) reference positions held in this block
        mask = np.where(width == 64, np.iinfo(np.uint64).max,
                        (np.left_shift(np.uint64(1), np.minimum(width, 63).astype(np.uint64)) - np.uint64(1)))
        zeros += _popcount(~v[b] & mask.astype(np.uint64))
    return zeros


def rouge_relevance(captions, image_captions, beta: float = 1.2, *, chunk: int | None = None) -> np.ndarray:
    """ROUGE-L relevance of every caption to every image: float32 (len(captions), len(image_captions)).

    M[c, j] = rouge_l(captions[c], image_captions[j]) — caption c scored against the captions of image j as
    references (TERAN's relevance matrix, docs/design.md §3). Identical token sequences are scored once, words become
    integer ids, and the LCS runs bit-parallel over many pairs at once; `chunk` bounds the candidate x reference
    pairs held at a time (default about 1 M).
    """
    if isinstance(captions, str) or not isinstance(captions, Sequence) \
            or not all(isinstance(x, str) for x in captions):
        raise ValueError("captions: expected a sequence of str")
    if isinstance(image_captions, str) or not isinstance(image_captions, Sequence):
        raise ValueError("image_captions: expected a sequence of lists of str (the captions of each image)")
    per_image = [_references(f"image_captions[{j}]", refs) for j, refs in enumerate(image_captions)]
    beta = checks.scalar("beta", beta, positive=True)
    pairs_budget = _chunk_rows(chunk, 1) if chunk is not None else _ROUGE_PAIRS
    n_img = len(per_image)
    if not captions or not n_img:
        return np.zeros((len(captions), n_img), dtype=np.float32)

    ids: dict[str, int] = {}
    seqs: dict[tuple[int, ...], int] = {}  # distinct token sequences -> row in `unique`

    def seq_id(text: str) -> int:
        key = tuple(ids.setdefault(w, len(ids)) for w in words(text))
        return seqs.setdefault(key, len(seqs))

    cand_seq = np.array([seq_id(c) for c in captions], dtype=np.int64)  # (C,)
    ref_seq = np.array([seq_id(x) for refs in per_image for x in refs], dtype=np.int64)  # (total refs,)
    starts = np.cumsum([0] + [len(refs) for refs in per_image])  # (N+1,) offsets of each image's references
    unique = [np.array(key, dtype=np.int64) for key in seqs]
    seq_len = np.array([len(x) for x in unique], dtype=np.float64)

    cand_u, cand_inv = np.unique(cand_seq, return_inverse=True)  # distinct candidates (Uc,)
    by_length = np.argsort(-seq_len[cand_u], kind="stable")  # longest first, so short ones drop out early
    cand_u, cand_inv = cand_u[by_length], np.argsort(by_length)[cand_inv]
    lc = max(1, int(seq_len[cand_u].max()))
    cands = np.full((cand_u.size, lc), -1, dtype=np.int64)  # (Uc, Lc) padded word ids
    for row, sid in enumerate(cand_u):
        cands[row, :len(unique[sid])] = unique[sid]
    cand_len = seq_len[cand_u]  # (Uc,)

    out = np.empty((cand_u.size, n_img), dtype=np.float32)
    per_chunk = max(1, pairs_budget // cand_u.size)  # references per chunk of images
    j0 = 0
    while j0 < n_img:
        j1 = j0 + 1
        while j1 < n_img and starts[j1 + 1] - starts[j0] <= per_chunk:
            j1 += 1
        slots = ref_seq[starts[j0]:starts[j1]]  # references of images j0..j1-1, in image order
        ref_u, slot_col = np.unique(slots, return_inverse=True)
        lcs = _lcs_grid(cands, [unique[sid] for sid in ref_u], len(ids))  # (Uc, Ru)
        ref_len = seq_len[ref_u]
        # Best precision = (max LCS over the image's references) / |c|; best recall = max of LCS / |r|.
        bounds = starts[j0:j1] - starts[j0]
        best_lcs = np.maximum.reduceat(lcs[:, slot_col], bounds, axis=1)  # (Uc, j1 - j0)
        p = best_lcs / np.maximum(cand_len, 1)[:, None]
        rec = lcs * np.divide(1.0, ref_len, out=np.zeros_like(ref_len), where=ref_len > 0)  # (Uc, Ru)
        r = np.maximum.reduceat(rec[:, slot_col], bounds, axis=1)
        out[:, j0:j1] = _rouge_f(p, r, beta)
        j0 = j1
    return out[cand_inv]


# --------------------------------------------------------------------------------------------------------------
# Embedding-space diagnostics
# --------------------------------------------------------------------------------------------------------------


def _normalized(name: str, x, layout: str) -> np.ndarray:
    """Rows of `x` scaled to unit length, n(x) = x / max(||x||, eps), as everywhere (relations.normalize)."""
    return normalize(_matrix(name, x, layout))[0]


def modality_gap(v, t) -> float:
    """Distance between the centroids of the normalised embeddings: ||mean_i n(v_i) - mean_j n(t_j)||.

    v: (N, D) image embeddings, t: (M, D) text embeddings (N and M may differ).
    """
    vn, tn = _normalized("v", v, "(N, D)"), _normalized("t", t, "(M, D)")
    if vn.shape[1] != tn.shape[1]:
        raise ValueError(f"v and t: expected the same width D, got {vn.shape[1]} and {tn.shape[1]}")
    return float(np.linalg.norm(vn.mean(0) - tn.mean(0)))


def alignment(v, t, alpha: float = 2) -> float:
    """Alignment (Wang & Isola 2020): mean over pairs of ||n(v_i) - n(t_i)||^alpha; lower is better aligned.

    v, t: (N, D), row i of each is a matching pair.
    """
    vn, tn = _normalized("v", v, "(N, D)"), _normalized("t", t, "(N, D)")
    if vn.shape != tn.shape:
        raise ValueError(f"v and t: expected the same shape (row i is a pair), got {vn.shape} and {tn.shape}")
    alpha = checks.scalar("alpha", alpha, positive=True)
    return float(np.mean(np.linalg.norm(vn - tn, axis=1) ** alpha))


def uniformity(x, t: float = 2, *, chunk: int | None = None) -> float:
    """Uniformity (Wang & Isola 2020): log mean_{i<j} exp(-t ||n(x_i) - n(x_j)||²); lower is more uniform.

    x: (N, D) with N >= 2. Computed as a running log-sum-exp over chunks of rows, so large N needs no N x N array.
    """
    xn = _normalized("x", x, "(N, D)")
    n = xn.shape[0]
    if n < 2:
        raise ValueError(f"x: expected at least 2 rows (pairs of points), got {n}")
    t = checks.scalar("t", t, positive=True)
    sq = (xn * xn).sum(1)  # (N,) 1, or 0 for a zero row
    total = -np.inf
    rows = _chunk_rows(chunk, n)
    for a in range(0, n - 1, rows):
        b = min(n - 1, a + rows)
        d2 = np.maximum(sq[a:b, None] + sq[None, :] - 2.0 * xn[a:b] @ xn.T, 0.0)  # (C, N) squared distances
        upper = np.arange(n)[None, :] > np.arange(a, b)[:, None]  # pairs i < j only
        total = np.logaddexp(total, logsumexp(-t * d2[upper]))
    return float(total - np.log(n * (n - 1) / 2))
