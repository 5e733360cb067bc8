"""Distances between a student's and a target's relation entries, as the structure distillation uses them
(docs/design.md §2): mean absolute error (the paper's choice), mean squared error, the L1 distance between
cumulative sums (the official code's "kl"), and the row-wise weighted 1-D Wasserstein-1 distance (the official
"wd").

Every public function returns `(value, grads)`: a Python float and the gradients of that float with respect to
each argument. |.| is differentiated as sign(.), the gradient everywhere except at its kink 0, where sign(0) = 0
is the subgradient torch also uses.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks

__all__ = ["mae", "mse", "cumsum_l1", "wasserstein"]


# --- mean absolute / squared error ---------------------------------------------------------------------------------


def _mae(x, y):
    """mean_k |x_k - y_k| over all entries.  x, y: same shape -> float.
    Backward: d|d|/dd = sign(d), and the mean divides by N, so g_x = g sign(x - y) / N and g_y = -g_x."""
    d = x - y
    value = float(np.mean(np.abs(d)))

    def back(g):
        g_x = g * np.sign(d) / d.size
        return g_x, -g_x

    return value, back


def _mse(x, y):
    """mean_k (x_k - y_k)^2 over all entries.  Backward: g_x = 2 g (x - y) / N, g_y = -g_x."""
    d = x - y
    value = float(np.mean(d * d))

    def back(g):
        g_x = 2.0 * g * d / d.size
        return g_x, -g_x

    return value, back


# --- cumulative-sum L1 (the official "kl") ----------------------------------------------------------------------------


def _cumsum_l1(x, y):
    """mean_k |C(x)_k - C(y)_k| with C(u)_k = u_1 + ... + u_k over the row-major flattened vectors.

    Not a KL divergence, and no quantile function either: the official code's `quantile_func` is a plain cumsum
    over the unsorted entries, and its option "kl" computes exactly this.

    Backward. c = C(x) - C(y) = C(x - y) because C is linear. With gc_k = g sign(c_k) / N, the gradient of
    sum_k gc_k c_k with respect to d_l = x_l - y_l is sum_{k >= l} gc_k (entry l enters every partial sum from l on):
    a reversed cumulative sum. g_x = that, reshaped; g_y = -g_x.
    """
    c = np.cumsum(x.ravel()) - np.cumsum(y.ravel())  # (N,)
    value = float(np.mean(np.abs(c)))

    def back(g):
        gc = g * np.sign(c) / c.size
        g_x = np.cumsum(gc[::-1])[::-1].reshape(x.shape)
        return g_x, -g_x

    return value, back


# --- weighted 1-D Wasserstein-1, row by row (the official "wd") -------------------------------------------------------


def _wasserstein(x, y, w):
    """mean_r W1(mu_r, nu_r) with mu_r = sum_j w_rj delta(x_rj) / sum_j w_rj and nu_r likewise with y_rj (the same
    weights for both).  x, y, w: (B, M) -> float.

    Forward, per row (what scipy.stats.wasserstein_distance computes, without its searchsorted): W1 is the area
    between the two CDFs, W1 = integral |F_mu(s) - F_nu(s)| ds. Sort the merged support s_0 <= ... <= s_{2M-1}
    (the 2M values of x_r and y_r; a stable sort). Between s_k and s_{k+1} both CDFs are constant, and
        F_mu - F_nu = G_k = (sum over the first k+1 merged atoms of +w for an x atom, -w for a y atom) / T,
    T = sum_j w_rj. So W1 = sum_k |G_k| delta_k with delta_k = s_{k+1} - s_k. (Where values tie, scipy's
    searchsorted-'right' CDF and this running sum differ only on intervals of length 0, which add nothing.)

    Backward at tie-free points (all 2M values of a row distinct, no G_k = 0), with c_k = |G_k| and the row
    mean's factor 1/B folded into the upstream g:
    * values: s_k appears in delta_{k-1} (+) and delta_k (-), so dW1/ds_k = c_{k-1} - c_k (c_{-1} = c_{2M-1} = 0);
      the sort is only a permutation, and the gradient goes back to each atom through it.
    * weights: with a_k = sign(G_k) delta_k / T, the signed weight of the atom at merged position m enters every
      G_k with k >= m, so dW1/d(signed weight at m) = A_m = sum_{k >= m} a_k (a reversed cumulative sum). The
      total T divides every G_k, so dW1/dT = -W1 / T. Weight w_rj is +1 in x_rj's atom, -1 in y_rj's atom and
      +1 in T:  dW1/dw_rj = A[pos(x_rj)] - A[pos(y_rj)] - W1 / T.
    """
    n_rows, m = x.shape
    both = np.concatenate([x, y], axis=1)  # (B, 2M) the merged support, unsorted
    order = np.argsort(both, axis=1, kind="stable")  # (B, 2M)
    s = np.take_along_axis(both, order, axis=1)  # (B, 2M) sorted support
    signed = np.take_along_axis(np.concatenate([w, -w], axis=1), order, axis=1)  # (B, 2M)
    total = w.sum(axis=1, keepdims=True)  # (B, 1)
    gap = np.cumsum(signed, axis=1)[:, :-1] / total  # (B, 2M-1) G_k = F_mu - F_nu on [s_k, s_{k+1})
    delta = np.diff(s, axis=1)  # (B, 2M-1)
    per_row = np.sum(np.abs(gap) * delta, axis=1)  # (B,)
    value = float(np.mean(per_row))

    def back(g):
        g_row = g / n_rows
        c = np.abs(gap) * g_row  # (B, 2M-1)
        g_s = np.zeros_like(s)
        g_s[:, 1:] += c
        g_s[:, :-1] -= c
        g_both = np.empty_like(both)
        np.put_along_axis(g_both, order, g_s, axis=1)  # undo the sort
        a = np.sign(gap) * delta * g_row / total  # (B, 2M-1)
        suffix = np.zeros_like(s)  # (B, 2M) A_m, zero at the last atom
        suffix[:, :-1] = np.cumsum(a[:, ::-1], axis=1)[:, ::-1]
        at_atom = np.empty_like(both)
        np.put_along_axis(at_atom, order, suffix, axis=1)
        g_w = at_atom[:, :m] - at_atom[:, m:] - g_row * per_row[:, None] / total
        return g_both[:, :m], g_both[:, m:], g_w

    return value, back


# --- public entry points --------------------------------------------------------------------------------------------


def _check_pair(x, y) -> None:
    """Shared with rebalance_torch.distances: two non-empty finite arrays of one shape."""
    checks.nonempty("x", x)
    checks.nonempty("y", y)
    checks.same_shape("x", x, "y", y)


def _check_wasserstein(x, y, weights) -> None:
    """Shared with rebalance_torch.distances: three finite (B, M) arrays, weights >= 0 with positive row sums."""
    checks.array("x", x, 2, "(B, M)")
    checks.array("y", y, 2, "(B, M)")
    checks.array("weights", weights, 2, "(B, M)")
    checks.same_shape("x", x, "y", y)
    checks.same_shape("x", x, "weights", weights)
    checks.nonnegative_rows("weights", weights, "(B, M)")


def _pair(x, y):
    x = checks.as_float_array("x", x)
    y = checks.as_float_array("y", y)
    _check_pair(x, y)
    return x, y


def _pair_grads(value, back):
    g_x, g_y = back(1.0)
    return value, {"x": g_x, "y": g_y}


def mae(x, y):
    """Mean absolute error mean|x - y| over all entries (same shape). Grads `x`, `y`."""
    return _pair_grads(*_mae(*_pair(x, y)))


def mse(x, y):
    """Mean squared error mean (x - y)^2 over all entries (same shape). Grads `x`, `y`."""
    return _pair_grads(*_mse(*_pair(x, y)))


def cumsum_l1(x, y):
    """mean|cumsum x - cumsum y| over the row-major flattened vectors (the official code's "kl"). Grads `x`, `y`."""
    return _pair_grads(*_cumsum_l1(*_pair(x, y)))


def wasserstein(x, y, weights):
    """Row-wise weighted 1-D Wasserstein-1 distance, averaged over rows: for each row r, the distance between the
    values x[r] and the values y[r], both weighted by weights[r] (non-negative, positive row sum).

    x, y, weights: (B, M). Equals mean_r scipy.stats.wasserstein_distance(x[r], y[r], weights[r], weights[r]).
    Grads `x`, `y`, `weights`.
    """
    x = checks.as_float_array("x", x)
    y = checks.as_float_array("y", y)
    weights = checks.as_float_array("weights", weights)
    _check_wasserstein(x, y, weights)
    value, back = _wasserstein(x, y, weights)
    g_x, g_y, g_w = back(1.0)
    return value, {"x": g_x, "y": g_y, "weights": g_w}


# The private forms by public name, for the composite structure distillation.
_FORMS = {name: globals()[f"_{name}"] for name in checks.DISTANCES}
