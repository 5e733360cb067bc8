"""Generalized contrastive learning (GCL) for universal retrieval (docs/gcl.md): a fused image+text embedding and
the contrastive loss over all three modalities' keys.

Modalities M = (i, t, it): the image embedding v, the text embedding t and the fused embedding e of the pair.
Every public function returns `(value, grads)` as in `rebalance_ref.losses`; `fuse` has an array value and takes
the keyword-only upstream gradient `grad_out` (default all ones).

The inputs are the *raw* projections (before n(.)): the student's `vision_proj(h_v)` and `text_proj(h_t)`. The
fused embedding sums them before normalising, so the longer of the two raw vectors weighs more in e.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.losses import _check_pair_contrast
from rebalance_ref.relations import _normalize, _upstream

__all__ = ["fuse", "gcl"]

# Which (anchor, positive) modality pairs a GCL loss sums: "all" is GCL, "cross" the image<->text restriction (plain
# CL, here with the same 3B-key denominator).
GCL_PAIRS = {"all": (("i", "t"), ("t", "i"), ("i", "it"), ("it", "i"), ("t", "it"), ("it", "t")),
             "cross": (("i", "t"), ("t", "i"))}
MODALITIES = ("i", "t", "it")


def _check_gcl(image, text, tau, idx, pairs):
    tau, ids = _check_pair_contrast("image", image, "text", text, tau, idx)
    if pairs not in GCL_PAIRS:
        raise ValueError(f"pairs: expected one of {', '.join(GCL_PAIRS)}, got {pairs!r}")
    return tau, ids


def _fuse(image, text):
    """e = n(image + text).  image, text: (B, D) -> e: (B, D).
    Backward: the sum passes the upstream gradient of n(.) unchanged to both inputs."""
    e, back_n = _normalize(image + text)

    def back(g):
        g_sum = back_n(g)
        return g_sum, g_sum

    return e, back


def fuse(image, text, *, grad_out=None):
    """The fused embedding of a pair: e = n(f_I + f_T), the raw projections summed, then scaled to unit length.
    image, text: (B, D) raw projections -> e (B, D); grads `image`, `text` (the vector-Jacobian product with
    `grad_out`)."""
    image = checks.as_float_array("image", image)
    text = checks.as_float_array("text", text)
    checks.array("image", image, 2, "(B, D)")
    checks.array("text", text, 2, "(B, D)")
    checks.same_shape("image", image, "text", text)
    e, back = _fuse(image, text)
    g_image, g_text = back(_upstream(grad_out, e))
    return e, {"image": g_image, "text": g_text}


def _masked_soft_cross_entropy(s, y, keep):
    """-mean_i sum_j y_ij log softmax_j(s_i) over the kept entries of each row only (masked keys leave the
    denominator).  s, y, keep: (B, C), y zero wherever keep is False -> float.

    Backward. Per row, l_i = -sum_j y_ij s_ij + (sum_j y_ij) log sum_{k kept} exp(s_ik), so
        dl_i/ds_ik = (sum_j y_ij) p_ik - y_ik  on kept entries (p the softmax over kept entries), 0 on masked ones;
    rows of y may sum to more than 1 (several positive modalities), the mean over rows divides by B.
    """
    masked = np.where(keep, s, -np.inf)
    shifted = masked - masked.max(axis=1, keepdims=True)
    log_z = np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))  # (B, 1)
    log_p = np.where(keep, shifted - log_z, 0.0)  # (B, C), 0 on masked entries where y is 0 too
    value = -float(np.sum(y * log_p)) / s.shape[0]

    def back(g):
        p = np.where(keep, np.exp(log_p), 0.0)
        return g * (p * y.sum(axis=1, keepdims=True) - y) / s.shape[0]

    return value, back


def gcl(image, text, tau, idx=None, pairs="all"):
    """The all-modality contrastive loss of GCL over 3B keys, the anchor masked:

        v = n(image), t = n(text), e = n(image + text);   keys K = [v; t; e]  (3B, D)
        for each anchor modality a and positive modality b with (a, b) in P:
            s^a = X_a K^T / tau  (B, 3B),  the anchor's own modality block with its same-image rows masked,
            CE_a,b = -mean_j sum_k y^b_jk log softmax_kept(s^a_j)_k,   y^b the soft labels in block b
        loss = mean over (a, b) in P of CE_a,b.

    P is every ordered pair of distinct modalities ("all": 6 pairs, GCL) or (i, t), (t, i) ("cross": plain CL with
    the same 3B-key denominator). The other positive modality of a row stays in its denominator as a negative (as
    the method writes it). Masking: for an anchor row j of modality a, the keys of modality a whose image id equals
    idx_j leave the softmax (with idx=None that is the anchor alone, whose exp(1/tau) would otherwise be a
    constant; with repeated ids it also removes copies of the anchor's image, which are the anchor itself for
    images). image, text: (B, D) raw projections; tau > 0; idx: (B,) or None. Grads `image`, `text`, `tau`.

    Backward. The anchors of modality a share one logit matrix, so the pairs (a, b1), (a, b2) add their labels:
    Y_a = sum_b y^b over the blocks b with (a, b) in P (rows summing to 1 or 2), one masked cross-entropy per a,
    weighted 1/|P|. Then g_s^a -> g_X_a = g_s^a K / tau, g_K += (g_s^a)^T X_a / tau, g_tau = -sum(g_s^a s^a) / tau
    (masked entries carry no gradient); g_K splits into g_v, g_t, g_e, and image and text collect
    n'(image)^T g_v + n'(sum)^T g_e and n'(text)^T g_t + n'(sum)^T g_e.
    """
    image = checks.as_float_array("image", image)
    text = checks.as_float_array("text", text)
    tau, ids = _check_gcl(image, text, tau, idx, pairs)
    batch = image.shape[0]
    v, back_v = _normalize(image)
    t, back_t = _normalize(text)
    e, back_e = _fuse(image, text)
    blocks = {"i": v, "t": t, "it": e}
    keys = np.concatenate([v, t, e])  # (3B, D)
    same = (ids[:, None] == ids[None, :]).astype(np.float64)  # (B, B)
    y_block = same / same.sum(axis=1, keepdims=True)  # (B, B) soft labels within a block
    chosen = GCL_PAIRS[pairs]
    weight = 1.0 / len(chosen)
    value, g_x = 0.0, {m: np.zeros_like(v) for m in MODALITIES}
    g_keys, g_tau = np.zeros_like(keys), 0.0
    for a_pos, a in enumerate(MODALITIES):
        positives = [b for (anchor, b) in chosen if anchor == a]
        if not positives:
            continue
        s = blocks[a] @ keys.T / tau  # (B, 3B)
        keep = np.ones_like(s, dtype=bool)
        keep[:, a_pos * batch:(a_pos + 1) * batch] = same == 0  # the anchor's own modality, its image's rows out
        y = np.zeros_like(s)
        for b in positives:
            b_pos = MODALITIES.index(b)
            y[:, b_pos * batch:(b_pos + 1) * batch] = y_block
        ce, back_ce = _masked_soft_cross_entropy(s, y, keep)
        value += weight * ce
        g_s = back_ce(weight)  # (B, 3B)
        g_x[a] += g_s @ keys / tau
        g_keys += g_s.T @ blocks[a] / tau
        g_tau += -float(np.sum(g_s * np.where(keep, s, 0.0))) / tau
    g_v = g_x["i"] + g_keys[:batch]
    g_t = g_x["t"] + g_keys[batch:2 * batch]
    g_e_image, g_e_text = back_e(g_x["it"] + g_keys[2 * batch:])
    grads = {"image": back_v(g_v) + g_e_image, "text": back_t(g_t) + g_e_text, "tau": g_tau}
    return value, grads
