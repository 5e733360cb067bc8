"""Momentum distillation (ALBEF, NeurIPS 2021) as an option of ITC: pseudo-targets from a momentum (EMA) copy of
the student, mixed with the image-id soft labels, over keys that include a queue of past momentum features.

Keys. `image_keys` (K, D) and `text_keys` (K, D) are the momentum model's features: rows 0..B-1 are this batch's
(ṽ, t̃), the rest a queue of earlier batches' features; `key_idx` (K,) holds each key's image id (a queue slot not
yet filled holds an id that matches no image, e.g. -1). The keys are constants: no gradient reaches them.

Soft labels over every key (the batch's and the queue's), for a batch row i with image id idx_i:
    g_ik = [idx_i == key_idx_k] / #{k' : idx_i == key_idx_k'}
Every row has at least one positive key: its own momentum feature (key_idx[:B] == idx).

Every public function returns `(value, grads)` as in `rebalance_ref.losses`.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.losses import _soft_cross_entropy
from rebalance_ref.relations import _scaled_cosine

__all__ = ["momentum_targets", "momentum_itc"]


# --- input checks, shared with rebalance_torch.momentum -----------------------------------------------------------


def _check_keys(image_keys, text_keys, idx, key_idx):
    """Two (K, D) key banks of the same shape, idx (B,) with B <= K, key_idx (K,) starting with idx.
    Returns (ids, key ids) as int64 arrays."""
    checks.array("image_keys", image_keys, 2, "(K, D)")
    checks.array("text_keys", text_keys, 2, "(K, D)")
    checks.same_shape("image_keys", image_keys, "text_keys", text_keys)
    keys = image_keys.shape[0]
    for name, value in (("idx", idx), ("key_idx", key_idx)):
        if value is None or checks._to_numpy(value).ndim != 1:
            raise ValueError(f"{name}: expected a 1-d array of image ids, got "
                             f"{None if value is None else checks._to_numpy(value).shape}")
    key_ids = checks.idx(key_idx, keys)
    ids = checks.idx(idx, checks._to_numpy(idx).shape[0])
    if ids.shape[0] > keys:
        raise ValueError(f"idx: expected at most K = {keys} batch rows (the batch's keys come first), "
                         f"got {ids.shape[0]}")
    if not np.array_equal(key_ids[: ids.shape[0]], ids):
        raise ValueError("key_idx: its first B entries must be the batch's ids idx (the batch's own momentum "
                         "features are the first keys)")
    return ids, key_ids


def _check_targets(image_keys, text_keys, tau, alpha, idx, key_idx):
    ids, key_ids = _check_keys(image_keys, text_keys, idx, key_idx)
    tau = checks.scalar("tau", tau, positive=True)
    alpha = checks.scalar("alpha", alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a weight in [0, 1], got {alpha}")
    return ids, key_ids, tau, alpha


def _check_momentum_itc(v, t, image_keys, text_keys, tau, targets):
    checks.array("v", v, 2, "(B, D)")
    checks.array("t", t, 2, "(B, D)")
    checks.same_shape("v", v, "t", t)
    checks.array("image_keys", image_keys, 2, "(K, D)")
    checks.array("text_keys", text_keys, 2, "(K, D)")
    checks.same_shape("image_keys", image_keys, "text_keys", text_keys)
    batch, dim = v.shape
    keys = image_keys.shape[0]
    if image_keys.shape[1] != dim:
        raise ValueError(f"image_keys: expected width D = {dim} (that of v), got {image_keys.shape[1]}")
    expected = (2, batch, keys)
    if tuple(targets.shape) != expected:
        raise ValueError(f"targets: expected shape {expected} (image-to-text, text-to-image rows over the keys), "
                         f"got {tuple(targets.shape)}")
    checks.finite("targets", targets)
    return checks.scalar("tau", tau, positive=True)


# --- shared pieces ------------------------------------------------------------------------------------------------


def _key_soft_labels(ids: np.ndarray, key_ids: np.ndarray) -> np.ndarray:
    """g_ik = [idx_i == key_idx_k] / #{k' : idx_i == key_idx_k'}.  ids (B,), key_ids (K,) -> (B, K), rows sum to 1."""
    same = ids[:, None] == key_ids[None, :]
    return same / same.sum(axis=1, keepdims=True)


def _softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- pseudo-targets -----------------------------------------------------------------------------------------------


def momentum_targets(image_keys, text_keys, tau, alpha, idx, key_idx):
    """The mixed targets of momentum distillation, for both directions.

    The momentum model's own image-to-text and text-to-image distributions over every key, blended with the id
    soft labels:
        q^{i2t}_i = softmax_k(n(ṽ_i) · n(t̃_k) / tau),   q^{t2i}_i = softmax_k(n(t̃_i) · n(ṽ_k) / tau)
        y = alpha q + (1 - alpha) g                      (g: the soft labels over the keys, see the module)
    with ṽ_i = image_keys[i], t̃_i = text_keys[i] for the batch rows i < B.

    image_keys, text_keys: (K, D); tau > 0; alpha in [0, 1] (ALBEF: 0.4, warmed up from 0); idx: (B,) the batch's
    image ids; key_idx: (K,), starting with idx. Returns y as an array (2, B, K) — y[0] image-to-text, y[1]
    text-to-image, rows summing to 1 — and no gradients: the targets are constants of the loss (stop-gradient,
    as ALBEF computes them under no_grad).
    """
    image_keys = checks.as_float_array("image_keys", image_keys)
    text_keys = checks.as_float_array("text_keys", text_keys)
    ids, key_ids, tau, alpha = _check_targets(image_keys, text_keys, tau, alpha, idx, key_idx)
    batch = ids.shape[0]
    g = _key_soft_labels(ids, key_ids)  # (B, K)
    s_i2t, _ = _scaled_cosine(image_keys[:batch], text_keys, tau)  # (B, K)
    s_t2i, _ = _scaled_cosine(text_keys[:batch], image_keys, tau)  # (B, K)
    y = np.stack([alpha * _softmax_rows(s) + (1.0 - alpha) * g for s in (s_i2t, s_t2i)])  # (2, B, K)
    return y, {}


# --- the loss -----------------------------------------------------------------------------------------------------


def momentum_itc(v, t, image_keys, text_keys, tau, targets):
    """ITC against the momentum keys and the mixed targets, symmetric.

    Each online embedding is scored against every momentum key of the other modality, and the cross-entropy of
    those scores is taken against the targets y of `momentum_targets`:
        s^{i2t} = n(v) n(text_keys)^T / tau,   s^{t2i} = n(t) n(image_keys)^T / tau          (B, K) each
        loss = (CE_rows(s^{i2t}, y[0]) + CE_rows(s^{t2i}, y[1])) / 2                         (batch mean)

    v, t: (B, D) the online model's embeddings (normalised inside); image_keys, text_keys: (K, D); tau > 0;
    targets: (2, B, K). Grads `v`, `t`, `tau` (the keys and targets are constants).

    Backward. Each cross-entropy gives g_s = (p - y) / B per row (rows of y sum to 1; see
    `rebalance_ref.losses._soft_cross_entropy`), halved by the mean of the two directions; then through the scaled
    cosine: g_n(v) = g_s n(text_keys) / tau, g_tau = -sum(g_s * s) / tau, and through n(.) to v (likewise for t).
    With K = B keys equal to (v, t) themselves and alpha = 0 this is `rebalance_ref.losses.itc`.
    """
    v = checks.as_float_array("v", v)
    t = checks.as_float_array("t", t)
    image_keys = checks.as_float_array("image_keys", image_keys)
    text_keys = checks.as_float_array("text_keys", text_keys)
    targets = checks.as_float_array("targets", targets)
    tau = _check_momentum_itc(v, t, image_keys, text_keys, tau, targets)
    s_i2t, back_i2t = _scaled_cosine(v, text_keys, tau)  # (B, K)
    s_t2i, back_t2i = _scaled_cosine(t, image_keys, tau)  # (B, K)
    l_i2t, ce_i2t = _soft_cross_entropy(s_i2t, targets[0])
    l_t2i, ce_t2i = _soft_cross_entropy(s_t2i, targets[1])
    g_v, _, g_tau_i = back_i2t(0.5 * ce_i2t(1.0))
    g_t, _, g_tau_t = back_t2i(0.5 * ce_t2i(1.0))
    return 0.5 * (l_i2t + l_t2i), {"v": g_v, "t": g_t, "tau": g_tau_i + g_tau_t}
