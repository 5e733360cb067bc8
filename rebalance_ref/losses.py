"""The method's losses (docs/design.md §2): image-text contrast (ITC), one-way contrast to a teacher (IIC / TTC),
image-text matching (ITM), and structure-aware distillation (KD, KDI, KDT).

Every public function returns `(value, grads)`: the loss as a Python float and its gradient with respect to each
differentiable argument (an array of that argument's shape, a float for a scalar).

Soft labels. Several captions of one image may share a batch; `idx[i]` is the image id of row i and
    y_ij = [idx_i == idx_j] / #{k : idx_k == idx_i},
so each row of y is a distribution over the row's positives (idx=None: every row its own image, y = identity).
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.distances import _FORMS as _DISTANCE_FORMS
from rebalance_ref.relations import _fuse_teachers, _offdiag, _relation, _scaled_cosine

__all__ = ["itc", "single_contrast", "itm", "structure_terms", "structure_distill"]


# --- shared pieces ------------------------------------------------------------------------------------------------


def _soft_labels(ids: np.ndarray) -> np.ndarray:
    """y_ij = [idx_i == idx_j] / #{k : idx_k == idx_i}.  ids: (B,) int -> y: (B, B), rows summing to 1."""
    same = ids[:, None] == ids[None, :]
    return same / same.sum(axis=1, keepdims=True)


def _soft_cross_entropy(s, y):
    """-mean_i sum_j y_ij log softmax_j(s_i): cross-entropy of each row's softmax against the soft labels y.
    s, y: (B, C) -> float.

    Backward. Per row, l_i = -sum_j y_ij s_ij + (sum_j y_ij) log sum_k exp(s_ik), so
        dl_i / ds_ik = -y_ik + (sum_j y_ij) p_ik,    p = softmax(s) row-wise,
    which is p - y when the labels of a row sum to 1; the mean over rows divides by B.
    The forward subtracts each row's maximum before exp (log-sum-exp), which changes nothing mathematically.
    """
    shifted = s - s.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.sum(np.exp(shifted), axis=1, keepdims=True))  # (B, C)
    value = -float(np.sum(y * log_p)) / s.shape[0]

    def back(g):
        return g * (np.exp(log_p) * y.sum(axis=1, keepdims=True) - y) / s.shape[0]

    return value, back


# --- input checks, shared with rebalance_torch.losses -------------------------------------------------------------


def _check_pair_contrast(name_a, a, name_b, b, tau, idx):
    """Two (B, D) batches of the same shape, tau > 0, idx of length B. Returns (tau as float, ids)."""
    checks.array(name_a, a, 2, "(B, D)")
    checks.array(name_b, b, 2, "(B, D)")
    checks.same_rows(name_a, a, name_b, b)
    checks.same_shape(name_a, a, name_b, b)
    return checks.scalar("tau", tau, positive=True), checks.idx(idx, a.shape[0])


def _check_itm(logits, labels):
    """logits (N, 2), labels N values in {0, 1}. Returns the labels as int64."""
    checks.array("logits", logits, 2, "(N, 2)")
    if logits.shape[1] != 2:
        raise ValueError(f"logits: expected shape (N, 2) (non-match, match), got {tuple(logits.shape)}")
    return checks.labels(labels, logits.shape[0])


def _check_structure(z, img_teacher, txt_teacher, lam, tau2, distance, weights, row_weights):
    """Three (B, .) batches with B >= 2, finite lam, tau2 > 0, a known distance, weights by name, and row_weights
    only with "wasserstein". Returns (lam, tau2, weights dict)."""
    checks.array("z", z, 2, "(B, D)", min_rows=2)
    checks.array("img_teacher", img_teacher, 2, "(B, D_image)", min_rows=2)
    checks.array("txt_teacher", txt_teacher, 2, "(B, D_text)", min_rows=2)
    checks.same_rows("z", z, "img_teacher", img_teacher)
    checks.same_rows("z", z, "txt_teacher", txt_teacher)
    lam = checks.scalar("lam", lam)
    tau2 = checks.scalar("tau2", tau2, positive=True)
    checks.distance(distance)
    if row_weights is not None:
        if distance != "wasserstein":
            raise ValueError(f"row_weights: only used with distance='wasserstein', got distance={distance!r}")
        checks.row_weights(row_weights, z.shape[0])
    return lam, tau2, checks.loss_weights(weights)


# --- ITC ------------------------------------------------------------------------------------------------------------


def itc(v, t, tau, idx=None):
    """Image-text contrastive loss with soft labels, symmetric:
        s = n(v) n(t)^T / tau,   loss = (CE_rows(s, y) + CE_rows(s^T, y^T)) / 2
    (image-to-text over the rows of s, text-to-image over its columns). v, t: (B, D), normalised inside (a no-op
    for embeddings that already are); tau > 0; idx: (B,) image ids or None. Grads `v`, `t`, `tau`.

    Backward: g_s = (g_rows + g_cols^T) / 2 from the two cross-entropies, then through the scaled cosine.
    """
    v = checks.as_float_array("v", v)
    t = checks.as_float_array("t", t)
    tau, ids = _check_pair_contrast("v", v, "t", t, tau, idx)
    y = _soft_labels(ids)
    s, back_s = _scaled_cosine(v, t, tau)
    i2t, back_i2t = _soft_cross_entropy(s, y)
    t2i, back_t2i = _soft_cross_entropy(s.T, y.T)
    g_v, g_t, g_tau = back_s(0.5 * (back_i2t(1.0) + back_t2i(1.0).T))
    return 0.5 * (i2t + t2i), {"v": g_v, "t": g_t, "tau": g_tau}


# --- IIC / TTC --------------------------------------------------------------------------------------------------------


def single_contrast(x, teacher, tau, idx=None):
    """One-way soft-label InfoNCE from a student embedding to a teacher's projected feature (IIC for images, TTC
    for texts):  s = n(x) n(teacher)^T / tau,  loss = CE_rows(s, y). There is no teacher-to-student direction.

    x, teacher: (B, D) (the teacher already through its trainable projection, which lives in the trainer); both
    normalised inside; tau > 0 (the ITC temperature); idx: (B,) or None. Grads `x`, `teacher`, `tau`.
    """
    x = checks.as_float_array("x", x)
    teacher = checks.as_float_array("teacher", teacher)
    tau, ids = _check_pair_contrast("x", x, "teacher", teacher, tau, idx)
    s, back_s = _scaled_cosine(x, teacher, tau)
    value, back_ce = _soft_cross_entropy(s, _soft_labels(ids))
    g_x, g_teacher, g_tau = back_s(back_ce(1.0))
    return value, {"x": g_x, "teacher": g_teacher, "tau": g_tau}


# --- ITM --------------------------------------------------------------------------------------------------------------


def itm(logits, labels):
    """Image-text matching: 2-way cross-entropy, mean over the N items (positives and sampled negatives alike).
    logits: (N, 2) (column 1 = "match"), labels: (N,) in {0, 1}. Grads `logits` = (softmax - onehot) / N."""
    logits = checks.as_float_array("logits", logits)
    lab = _check_itm(logits, labels)
    value, back = _soft_cross_entropy(logits, np.eye(2)[lab])
    return value, {"logits": back(1.0)}


# --- structure-aware distillation ---------------------------------------------------------------------------------


def _structure(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights):
    """KD, KDI, KDT and one backward for any weighting of them.

    S_F = S(z), S_I = S(img_teacher), S_T = S(txt_teacher) (scaled cosine relations, 1/tau2, no softmax);
    E = lam S_T + (1 - lam) S_I;  KD = d(S_F, E), KDI = d(S_I, E), KDT = d(S_T, E), each over a *view* of the
    (B, B) matrices that leaves the diagonal out:
    * mae, mse, cumsum_l1: the off-diagonal entries, row-major, a vector of length B (B - 1);
    * wasserstein: the same entries as B rows of B - 1, each entry multiplied by its row weight w_rj (the
      official U = E * D, V = S_F * D, with D = row_weights off its diagonal; all ones when row_weights is None),
      and w as the weights of both distributions of a row.

    Returns ({"kd", "kdi", "kdt"} -> float, back(weights) -> grads of sum_k weights[k] * term_k with respect to
    z, lam, tau2 and, when given, row_weights). The teacher features are constants here.
    """
    batch = z.shape[0]
    s_f, back_f = _relation(z, tau2)
    s_i, back_i = _relation(img_teacher, tau2)
    s_t, back_t = _relation(txt_teacher, tau2)
    e, back_e = _fuse_teachers(s_t, s_i, lam)
    dist = _DISTANCE_FORMS[distance]

    if distance == "wasserstein":
        w_full = np.ones_like(s_f) if row_weights is None else row_weights  # (B, B)
        w, back_w = _offdiag(w_full)
        w = w.reshape(batch, batch - 1)  # (B, B-1) row r: the weights of row r's off-diagonal entries

        def view(r):  # (B, B) -> (B, B-1), weighted entries
            raw, back_raw = _offdiag(r)
            raw = raw.reshape(batch, batch - 1)
            return raw * w, lambda g: (back_raw((g * w).ravel()), g * raw)  # -> (g_r, g_w)

        def distance_of(a, b):
            return dist(a, b, w)
    else:

        def view(r):
            vec, back_vec = _offdiag(r)
            return vec, lambda g: (back_vec(g), 0.0)

        def distance_of(a, b):
            return dist(a, b)

    (u_f, bv_f), (u_i, bv_i), (u_t, bv_t), (u_e, bv_e) = (view(r) for r in (s_f, s_i, s_t, e))
    forms = {"kd": distance_of(u_f, u_e), "kdi": distance_of(u_i, u_e), "kdt": distance_of(u_t, u_e)}
    terms = {k: value for k, (value, _) in forms.items()}

    def back(weights):
        g_u = {"kd": 0.0, "kdi": 0.0, "kdt": 0.0, "e": 0.0}  # upstream of each view
        g_w = 0.0  # the distance's own weight gradient (wasserstein)
        for k, (_, back_d) in forms.items():
            out = back_d(weights[k])
            g_u[k] = out[0]
            g_u["e"] = g_u["e"] + out[1]
            if len(out) == 3:
                g_w = g_w + out[2]
        g_sf, gw_f = bv_f(g_u["kd"])
        g_si, gw_i = bv_i(g_u["kdi"])
        g_st, gw_t = bv_t(g_u["kdt"])
        g_e, gw_e = bv_e(g_u["e"])
        g_st_e, g_si_e, g_lam = back_e(g_e)
        g_z, g_tau_f = back_f(g_sf, inputs=weights["kd"] != 0)  # z enters KD only
        g_z = np.zeros_like(z) if g_z is None else g_z
        _, g_tau_i = back_i(g_si + g_si_e, inputs=False)
        _, g_tau_t = back_t(g_st + g_st_e, inputs=False)
        grads = {"z": g_z, "lam": g_lam, "tau2": g_tau_f + g_tau_i + g_tau_t}
        if row_weights is not None:
            grads["row_weights"] = back_w((g_w + gw_f + gw_i + gw_t + gw_e).ravel())
        return grads

    return terms, back


def _structure_inputs(z, img_teacher, txt_teacher, lam, tau2, distance, weights, row_weights):
    z = checks.as_float_array("z", z)
    img_teacher = checks.as_float_array("img_teacher", img_teacher)
    txt_teacher = checks.as_float_array("txt_teacher", txt_teacher)
    row_weights = None if row_weights is None else checks.as_float_array("row_weights", row_weights)
    lam, tau2, weights = _check_structure(z, img_teacher, txt_teacher, lam, tau2, distance, weights, row_weights)
    return (z, img_teacher, txt_teacher, lam, tau2, distance, row_weights), weights


def structure_terms(z, img_teacher, txt_teacher, lam, tau2, distance="mae", row_weights=None):
    """The three structure-distillation terms separately (for logging), with the gradients of each.

    Returns ({"kd": KD, "kdi": KDI, "kdt": KDT}, {term: {"z", "lam", "tau2"[, "row_weights"]: gradient}}).
    Arguments as in `structure_distill`.
    """
    args, _ = _structure_inputs(z, img_teacher, txt_teacher, lam, tau2, distance, None, row_weights)
    terms, back = _structure(*args)
    return terms, {k: back({j: float(j == k) for j in terms}) for k in terms}


def structure_distill(z, img_teacher, txt_teacher, lam, tau2, distance="mae", weights=None, row_weights=None):
    """Structure-aware distillation: weights["kd"] KD + weights["kdi"] KDI + weights["kdt"] KDT (default all 1).

    S_F = S(z) from the student's fused pair features z (B, D); S_I = S(img_teacher) (B, D_image) and
    S_T = S(txt_teacher) (B, D_text) from the frozen teachers' raw features; S(x) = n(x) n(x)^T / tau2;
    E = lam S_T + (1 - lam) S_I;  KD = d(S_F, E),  KDI = d(S_I, E),  KDT = d(S_T, E)  on the off-diagonal entries.
    distance d: "mae" (default, the paper's), "mse", "cumsum_l1" (the official "kl"), "wasserstein" (the official
    "wd": row_weights (B, B) plays the official D = 1 - t t^T, see `_structure` and docs/formulas.md).

    Grads `z`, `lam`, `tau2`, and `row_weights` when it is given. The teacher features are constants here; where
    they pass through trainable layers (the official "wd" MLPs), those live in the trainer and torch's autograd
    carries the gradient into them.
    """
    args, w = _structure_inputs(z, img_teacher, txt_teacher, lam, tau2, distance, weights, row_weights)
    terms, back = _structure(*args)
    return sum(w[k] * terms[k] for k in terms), back(w)
