"""How ambiguous are a world's captions? Which images each caption is true of, and the recall that allows.

A shapes-world caption names some objects and some of their attributes (`rebalance_ref.shapes.split_mentions`).
Caption c is *true of* image n when its mentioned objects can be matched to distinct objects of image n with
every stated attribute equal. A terse caption ("a red triangle") is true of every image holding a red triangle;
a caption with a noisy word may be false of its own image.

The *literal oracle* scores caption c against image n by 1 when c is true of n, else 0, both ways, and breaks
ties uniformly at random: it knows everything the caption states and nothing more. Relation phrases are checked
("a red circle left of a blue square": the circle's column is left of the square's). It is not a ceiling for a
learner, for two reasons. It ranks every caption true of an image alike, where a learner ranks a caption that
fits few images above one that fits many ("a red shape"). And a learner picks up how the generator writes
captions, above all how often it leaves a whole object out (the balanced world never does, so there a caption
naming two objects is never about a three-object scene). The *Bayes oracle* adds both: text -> image it ranks
the images a caption is true of by the likelihood that the generator wrote the caption from them
(`likelihood_scores`, which knows the object-drop rate), image -> text it ranks captions by the posterior of the
image given the caption (uniform prior over the split's images) -- the Bayes ranking under that model. Both
report expected R@K under random tie breaking.
"""

from __future__ import annotations

import itertools

import numpy as np

from rebalance_ref.probe import _KIND_ORDER as _KINDS
from rebalance_ref.probe import _VALUES, _gallery_codes
from rebalance_ref.shapes import _RELATIONS, GRID, MAX_OBJECTS

_PERMS = np.array(list(itertools.permutations(range(MAX_OBJECTS))))  # (P, K): mention slot -> image slot
RECALL_KS = (1, 5, 10)
# relation word -> (coordinate compared: 0 = column, 1 = row; 0: this object's is smaller, 1: larger)
_RELATION_TESTS = {word: (axis, which) for axis, key in enumerate(("h", "v"))
                   for which, word in enumerate(_RELATIONS[key])}


def encode_mentions(mentions: list) -> tuple[np.ndarray, np.ndarray]:
    """Captions' mentions as value indices (C, K, 4) in the probe's kind order [shape, colour, size, position],
    -1 = not stated, and a mask (C, K) of mentioned objects. `mentions`: per caption a list of 1..K mention dicts
    (`shapes.CaptionMentions`; a missing key counts as not stated)."""
    codes = np.full((len(mentions), MAX_OBJECTS, len(_KINDS)), -1, dtype=np.int64)
    mask = np.zeros((len(mentions), MAX_OBJECTS), dtype=bool)
    for c, objects in enumerate(mentions):
        if not isinstance(objects, list | tuple) or not 1 <= len(objects) <= MAX_OBJECTS:
            raise ValueError(f"mentions[{c}] must be a list of 1..{MAX_OBJECTS} mention dicts, got {objects!r}")
        for k, ob in enumerate(objects):
            if not isinstance(ob, dict):
                raise ValueError(f"mentions[{c}][{k}] must be a dict, got {ob!r}")
            for a, kind in enumerate(_KINDS):
                value = ob.get(kind)
                if value is not None and value not in _VALUES[kind]:
                    raise ValueError(f"mentions[{c}][{k}]: {kind} must be one of {_VALUES[kind]} or None, "
                                     f"got {value!r}")
                codes[c, k, a] = -1 if value is None else _VALUES[kind].index(value)
            mask[c, k] = True
    return codes, mask


def encode_relations(mentions: list) -> np.ndarray:
    """Each caption's relation phrase as int (C, 4) [coordinate (0 column, 1 row; -1 = no relation), which (0:
    mention a's is smaller, 1: larger), a, b]: the first mention with a "relation" [word, b] is a."""
    out = np.full((len(mentions), 4), -1, dtype=np.int64)
    out[:, 2:] = 0
    for c, objects in enumerate(mentions):
        for a, ob in enumerate(objects):
            relation = ob.get("relation") if isinstance(ob, dict) else None
            if relation:
                word, b = relation
                if word not in _RELATION_TESTS or not isinstance(b, int) or not 0 <= b < len(objects) or b == a:
                    raise ValueError(f"mentions[{c}][{a}]: relation must be [one of {sorted(_RELATION_TESTS)}, "
                                     f"the index of another mention], got {relation!r}")
                out[c] = (*_RELATION_TESTS[word], a, b)
                break
    return out


def caption_match_counts(mentions: list, attributes: list, chunk: int = 512) -> np.ndarray:
    """int8 (C, N): in how many ways caption c is true of image n — the number of assignments of its mentioned
    objects to distinct objects of image n with every stated attribute equal and its relation phrase (if any)
    holding between the two objects assigned to it; 0 when c is false of n. (Counted over the K! slot
    permutations: each assignment of k mentions appears (K - k)! times, a constant per caption.)
    mentions: per caption a list of mention dicts (flattened over images); attributes: per image a list of
    object dicts (`shapes` metadata)."""
    want, said = encode_mentions(mentions)   # (C, K, 4), (C, K)
    rel = encode_relations(mentions)         # (C, 4) [coordinate, which, a, b]
    have, real = _gallery_codes(attributes)  # (N, K, 4) [shape, colour, size, cell], (N, K)
    coords = np.stack([have[..., 3] % GRID, have[..., 3] // GRID], axis=-1)  # (N, K, 2) column, row
    out = np.empty((len(want), len(have)), dtype=np.int8)  # at most K! = 6
    for lo in range(0, len(want), chunk):
        w, s, r = want[lo:lo + chunk], said[lo:lo + chunk], rel[lo:lo + chunk]
        # fits[c, n, m, o]: mention m of caption c agrees with object slot o of image n on every stated attribute
        agree = (w[:, None, :, None, :] < 0) | (w[:, None, :, None, :] == have[None, :, None, :, :])
        fits = agree.all(-1) & real[None, :, None, :]                      # (c, N, K, K)
        fits |= ~s[:, None, :, None]                                        # an unmentioned slot fits anywhere
        has_rel, axis = r[:, 0] >= 0, np.maximum(r[:, 0], 0)                # (c,), (c,)
        count = np.zeros(fits.shape[:2], dtype=np.int8)                     # (c, N)
        for p in _PERMS:                                                    # distinct objects: a permutation
            match = fits[:, :, np.arange(MAX_OBJECTS), p].all(-1)           # (c, N)
            va, vb = coords[:, p[r[:, 2]], axis].T, coords[:, p[r[:, 3]], axis].T  # (c, N) a's and b's coordinate
            holds = np.where(r[:, 1:2] == 0, va < vb, va > vb)              # (c, N)
            count += match & (~has_rel[:, None] | holds)
        out[lo:lo + chunk] = count
    return out


def caption_matches(mentions: list, attributes: list, chunk: int = 512) -> np.ndarray:
    """bool (C, N): caption c is true of image n (`caption_match_counts` > 0)."""
    return caption_match_counts(mentions, attributes, chunk) > 0


def hit_probability(n, p, k) -> np.ndarray:
    """P(at least one of p positives among the first k of n tied items in uniformly random order), float64,
    arrays broadcast (k <= 0 gives 0): 1 - C(n - p, k) / C(n, k) = 1 - prod_{i<k} (n - p - i) / (n - i)."""
    n, p, k = (np.asarray(x, dtype=np.float64) for x in (n, p, k))
    miss = np.ones(np.broadcast(n, p, k).shape)
    for i in range(int(np.max(k, initial=0))):
        ratio = np.clip(n - p - i, 0, None) / np.maximum(n - i, 1)
        miss = np.where(i < k, miss * ratio, miss)
    return np.where((p > 0) & (k > 0), 1.0 - miss, 0.0)


def _expected_hits(scores: np.ndarray, positive: np.ndarray, k: int) -> np.ndarray:
    """Per query row, P(a positive in the top k) with ties broken uniformly at random: the items scoring above
    the best positive come first, then the best positive's tie level. scores, positive: (Q, G); -> (Q,)."""
    best = np.where(positive, scores, -np.inf).max(1, keepdims=True)     # (Q, 1) the best positive's score
    above = (scores > best).sum(1)                                        # (Q,) all negatives
    tied = scores == best                                                 # (Q, G)
    return hit_probability(tied.sum(1), (tied & positive).sum(1), k - above)


def expected_recall(sim_i2t, txt2img, ks=RECALL_KS, *, sim_t2i=None, decimals: int = 12) -> dict[str, float]:
    """Cross-modal Recall@K in percent (keys and layout as `metrics.retrieval_recall`) in expectation over
    uniformly random tie breaking, where that function counts ties optimistically. sim_i2t: (N, C) scores;
    txt2img: int (C,); sim_t2i: (C, N), default sim_i2t transposed. Scores are rounded to `decimals` first, so
    that equal values computed along different float paths tie."""
    s = np.round(np.asarray(sim_i2t, dtype=np.float64), decimals)
    n_img, n_txt = s.shape
    txt2img = np.asarray(txt2img, dtype=np.int64)
    if txt2img.shape != (n_txt,) or (n_txt and (txt2img.min() < 0 or txt2img.max() >= n_img)):
        raise ValueError(f"txt2img must be (C,) = ({n_txt},) image indices in [0, {n_img}), got shape "
                         f"{txt2img.shape}")
    st = s.T if sim_t2i is None else np.round(np.asarray(sim_t2i, dtype=np.float64), decimals)
    if st.shape != (n_txt, n_img):
        raise ValueError(f"sim_t2i: expected shape {(n_txt, n_img)} (C, N), got {st.shape}")
    own_image = txt2img[:, None] == np.arange(n_img)[None, :]             # (C, N)
    out: dict[str, float] = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100.0 * float(_expected_hits(s, own_image.T, k).mean())
        out[f"t2i_r{k}"] = 100.0 * float(_expected_hits(st, own_image, k).mean())
    for direction in ("i2t", "t2i"):
        out[f"{direction}_mean"] = float(np.mean([out[f"{direction}_r{k}"] for k in ks]))
    out["r_mean"] = (out["i2t_mean"] + out["t2i_mean"]) / 2.0
    return out


def oracle_recall(matches: np.ndarray, txt2img: np.ndarray, ks=RECALL_KS) -> dict[str, float]:
    """The literal caption-content oracle's expected cross-modal recall in percent (`expected_recall` keys): score
    1 where caption c is true of image n, else 0, both directions. matches: bool (C, N); txt2img: int (C,).
    t2i: caption c's image among the m images c is true of -> min(1, k/m); i2t: image n's own captions (a of them
    true of it) among the m captions true of it -> 1 - C(m - a, k) / C(m, k); a caption false of its own image
    (word noise) ranks that image after the m."""
    matches = np.asarray(matches, dtype=bool)
    return expected_recall(matches.T.astype(np.float64), txt2img, ks)


def likelihood_scores(counts: np.ndarray, n_mentions: np.ndarray, n_objects: np.ndarray,
                      drop_object: float) -> np.ndarray:
    """How likely image n is to have produced caption c, up to a factor that depends on c alone, float64 (C, N):
    counts[c, n] * drop_object ** (objects of n the caption leaves out). The generator drops each object
    independently with probability `drop_object` and words the kept ones the same way whichever image they come
    from, so among the images a caption is true of, one with fewer unmentioned objects and more matching
    assignments is likelier (at drop_object = 0 only images with exactly the mentioned objects remain). Ignored:
    the "at least one object" rule and the relation axis draw (a small image-dependent factor each).
    counts: int (C, N) `caption_match_counts`; n_mentions: (C,); n_objects: (N,)."""
    extra = np.asarray(n_objects)[None, :] - np.asarray(n_mentions)[:, None]   # (C, N), >= 0 where counts > 0
    return np.asarray(counts, dtype=np.float64) * np.float64(drop_object) ** np.clip(extra, 0, None)


def bayes_oracle_recall(counts: np.ndarray, n_mentions, n_objects, drop_object: float, txt2img,
                        ks=RECALL_KS) -> dict[str, float]:
    """The Bayes oracle's expected recall (`expected_recall` keys): like the literal one it reads what captions
    state, and it also knows how often the generator drops a whole object. t2i ranks images by
    `likelihood_scores`; i2t ranks captions by the posterior of the image given the caption (the likelihood over
    its sum across the split's images, uniform prior): the Bayes ranking under that model, ties at random."""
    like = likelihood_scores(counts, n_mentions, n_objects, drop_object)   # (C, N)
    total = like.sum(1, keepdims=True)                                       # (C, 1)
    posterior = np.divide(like, total, out=np.zeros_like(like), where=total > 0)
    return expected_recall(posterior.T, txt2img, ks, sim_t2i=like)


def ambiguity_stats(matches: np.ndarray, txt2img: np.ndarray) -> dict[str, float]:
    """Per caption, the number of *other* images it is true of: median, mean, the share (in percent) with at least
    one, and the share of captions false of their own image (noise). matches: bool (C, N); txt2img: (C,)."""
    matches = np.asarray(matches, dtype=bool)
    txt2img = np.asarray(txt2img, dtype=np.int64)
    own = matches[np.arange(len(txt2img)), txt2img]
    others = matches.sum(1) - own                                         # (C,)
    return {"median_other_images": float(np.median(others)), "mean_other_images": float(others.mean()),
            "share_ambiguous": 100.0 * float((others >= 1).mean()),
            "share_false_of_own": 100.0 * float((~own).mean())}


def itm_noise_floor(share, negatives: int = 2) -> float:
    """The least mean ITM loss (nats) when a fraction `share` of the negative pairs are in fact true pairs, which no
    head can tell from positives, and every other pair is told apart perfectly. Per positive come `negatives`
    negatives; the 1 + negatives·share pairs that look matched are best called matched with p = 1 / (1 +
    negatives·share), so the floor is (1 + negatives·share) / (1 + negatives) · H(p), H the binary entropy.
    share 0 gives 0; share 1 gives the label prior H(1 / (1 + negatives)) (0.636 for ITM's 1 : 2)."""
    share = float(share)
    if not 0.0 <= share <= 1.0 or isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        raise ValueError(f"share must be in [0, 1] and negatives an int >= 1, got {share!r}, {negatives!r}")
    looks_matched = 1.0 + negatives * share
    p = 1.0 / looks_matched
    entropy = -p * np.log(p) - (1.0 - p) * np.log(1.0 - p) if 0.0 < p < 1.0 else 0.0
    return float(looks_matched / (1.0 + negatives) * entropy)
