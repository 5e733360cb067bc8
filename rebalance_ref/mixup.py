"""Geodesic multi-modal mixup (m²-Mix, docs/mixup.md): spherical interpolation between an image and its caption,
and the contrastive loss that uses the mixed embeddings as hard negatives.

Every public function returns `(value, grads)` as in `rebalance_ref.losses`; `slerp` has an array value and takes
the keyword-only upstream gradient `grad_out` (default all ones). The mixing weight lam is a constant here (the
trainer draws it from Beta(beta, beta) once per step); it gets no gradient.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.gcl import _masked_soft_cross_entropy
from rebalance_ref.losses import _check_pair_contrast
from rebalance_ref.relations import _normalize, _upstream
from rebalance_ref.tolerances import SLERP_COS_CLAMP, SLERP_MIN_ANGLE

__all__ = ["slerp", "m2_mix"]


def _check_lam(lam) -> float:
    lam = checks.scalar("lam", lam)
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam: expected a mixing weight in [0, 1], got {lam}")
    return lam


def _slerp(u, w, lam):
    """Row-wise geodesic interpolation of unit vectors, m = sin(lam θ)/sin θ · u + sin((1 - lam) θ)/sin θ · w,
    θ = arccos(clip(u·w, -1 + SLERP_COS_CLAMP, 1)); rows with θ < SLERP_MIN_ANGLE use the normalised lerp
    n(lam u + (1 - lam) w) instead (equal to slerp up to O(θ²), and without its 0/0).  u, w: (B, D) -> m: (B, D).

    Backward (rows on the slerp branch). With α = sin(lam θ)/sin θ, β = sin((1 - lam) θ)/sin θ and c = u·w:
        dα/dθ = (lam cos(lam θ) sin θ - sin(lam θ) cos θ) / sin²θ,   dβ/dθ likewise with 1 - lam,
        dθ/dc = -1 / sin θ  (0 where the clamp binds),
        r = (g·u dα/dθ + g·w dβ/dθ) dθ/dc,   g_u = α g + r w,   g_w = β g + r u.
    At θ >= SLERP_MIN_ANGLE every factor is bounded by ~1/SLERP_MIN_ANGLE and dα/dθ = O(θ), so r stays O(1).
    Rows on the lerp branch: g_pre = n'(lam u + (1 - lam) w)^T g, g_u = lam g_pre, g_w = (1 - lam) g_pre.
    """
    c_raw = np.sum(u * w, axis=1, keepdims=True)  # (B, 1)
    c = np.clip(c_raw, -1.0 + SLERP_COS_CLAMP, 1.0)
    inside = (c_raw > -1.0 + SLERP_COS_CLAMP) & (c_raw < 1.0)  # (B, 1) where the clamp passes gradients
    theta = np.arccos(c)  # (B, 1)
    geodesic = theta >= SLERP_MIN_ANGLE  # (B, 1)
    th = np.where(geodesic, theta, 1.0)  # a safe angle on the lerp rows (their slerp values are discarded)
    sin_th, cos_th = np.sin(th), np.cos(th)
    alpha = np.sin(lam * th) / sin_th  # (B, 1)
    beta = np.sin((1.0 - lam) * th) / sin_th  # (B, 1)
    lerp, back_lerp = _normalize(lam * u + (1.0 - lam) * w)
    m = np.where(geodesic, alpha * u + beta * w, lerp)

    def back(g):
        d_alpha = (lam * np.cos(lam * th) * sin_th - np.sin(lam * th) * cos_th) / sin_th ** 2
        d_beta = ((1.0 - lam) * np.cos((1.0 - lam) * th) * sin_th - np.sin((1.0 - lam) * th) * cos_th) / sin_th ** 2
        d_theta = np.where(inside, -1.0 / sin_th, 0.0)
        r = (np.sum(g * u, axis=1, keepdims=True) * d_alpha + np.sum(g * w, axis=1, keepdims=True) * d_beta) * d_theta
        g_pre = back_lerp(np.where(geodesic, 0.0, g))
        g_u = np.where(geodesic, alpha * g + r * w, lam * g_pre)
        g_w = np.where(geodesic, beta * g + r * u, (1.0 - lam) * g_pre)
        return g_u, g_w

    return m, back


def slerp(a, b, lam, *, grad_out=None):
    """Geodesic mixup of row pairs on the unit sphere: m_lam(a, b) = sin(lam θ)/sin θ · n(a) + sin((1-lam) θ)/sin θ
    · n(b), θ the angle between n(a) and n(b); lam = 1 gives n(a), lam = 0 gives n(b). Safe at small angles (the
    normalised lerp below SLERP_MIN_ANGLE) and near antipodes (the cosine clamped at -1 + SLERP_COS_CLAMP).
    a, b: (B, D), normalised inside; lam in [0, 1] -> (B, D) unit rows; grads `a`, `b`."""
    a = checks.as_float_array("a", a)
    b = checks.as_float_array("b", b)
    checks.array("a", a, 2, "(B, D)")
    checks.array("b", b, 2, "(B, D)")
    checks.same_shape("a", a, "b", b)
    lam = _check_lam(lam)
    u, back_a = _normalize(a)
    w, back_b = _normalize(b)
    m, back = _slerp(u, w, lam)
    g_u, g_w = back(_upstream(grad_out, m))
    return m, {"a": back_a(g_u), "b": back_b(g_w)}


def m2_mix(v, t, lam, tau, idx=None):
    """The m²-Mix loss: each pair's mixed embedding m_j = slerp(v_j, t_j, lam) is a hard negative for the other rows,
    in both directions, and the matching pair is the positive:

        A^I_ij = v_i·t_i / tau if i = j else v_i·m_j / tau,    A^T_ij = t_i·v_i / tau if i = j else t_i·m_j / tau,
        loss = CE_rows(A^I, I) + CE_rows(A^T, I)   (a sum; mixed embeddings are never anchors).

    With repeated image ids, the off-diagonal entries j of the same image as i (whose m_j mixes the anchor's own
    image or a caption of it) leave the denominator. v, t: (B, D), normalised inside; lam in [0, 1]; tau > 0;
    idx: (B,) or None. Grads `v`, `t`, `tau`.

    Backward. From the two masked cross-entropies g_I, g_T (B, B): the diagonal gives g_pos = diag(g_I) + diag(g_T)
    on the positive logit v_i·t_i / tau, so g_v += g_pos w / tau, g_t += g_pos u / tau; the off-diagonal parts
    G_I, G_T give g_v += G_I m / tau, g_t += G_T m / tau, g_m = (G_I^T u + G_T^T w) / tau, which flows through
    slerp back into v and t; g_tau = -sum(g * A) / tau over the kept entries. Finally through n(.) on each side.
    """
    v = checks.as_float_array("v", v)
    t = checks.as_float_array("t", t)
    tau, ids = _check_pair_contrast("v", v, "t", t, tau, idx)
    lam = _check_lam(lam)
    batch = v.shape[0]
    u, back_v = _normalize(v)
    w, back_t = _normalize(t)
    m, back_m = _slerp(u, w, lam)
    eye = np.eye(batch, dtype=bool)
    keep = ~((ids[:, None] == ids[None, :]) & ~eye)  # (B, B) the same image's other rows out
    pos = np.sum(u * w, axis=1) / tau  # (B,)
    a_img = np.where(eye, pos[:, None], u @ m.T / tau)  # (B, B)
    a_txt = np.where(eye, pos[:, None], w @ m.T / tau)  # (B, B)
    y = eye.astype(np.float64)
    ce_img, back_img = _masked_soft_cross_entropy(a_img, y, keep)
    ce_txt, back_txt = _masked_soft_cross_entropy(a_txt, y, keep)
    g_img, g_txt = back_img(1.0), back_txt(1.0)  # (B, B), zero on masked entries
    g_pos = np.diag(g_img) + np.diag(g_txt)  # (B,)
    off_img, off_txt = np.where(eye, 0.0, g_img), np.where(eye, 0.0, g_txt)
    g_mu, g_mw = back_m((off_img.T @ u + off_txt.T @ w) / tau)
    g_u = (off_img @ m + g_pos[:, None] * w) / tau + g_mu
    g_w = (off_txt @ m + g_pos[:, None] * u) / tau + g_mw
    g_tau = -float(np.sum(g_img * np.where(keep, a_img, 0.0)) + np.sum(g_txt * np.where(keep, a_txt, 0.0))) / tau
    return ce_img + ce_txt, {"v": back_v(g_u), "t": back_t(g_w), "tau": g_tau}
