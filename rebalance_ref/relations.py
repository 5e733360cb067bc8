"""Relation matrices of a batch: row normalisation, scaled cosine relations, their off-diagonal entries, and the
blend of the two teachers' relations (docs/design.md §2).

Every public function returns `(value, grads)`. Where the value is an array, `grads` holds the vector-Jacobian
product with the upstream gradient `grad_out` (an array shaped like the value; default all ones, i.e. the
gradient of `value.sum()`). `grad_out` exists only here, not in the torch mirror, where autograd plays its part.

Inside the package each formula is a private `_name(...)` returning the value and a `back(g)` closure, so that
composite losses (rebalance_ref.losses) run each forward once and chain the closures.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.tolerances import NORM_EPS

__all__ = ["normalize", "cosine_relation", "offdiag", "fuse_teachers"]


# --- input checks, shared with rebalance_torch.relations ------------------------------------------------------------


def _check_cosine_relation(x, tau) -> float:
    checks.array("x", x, 2, "(B, D)", min_rows=2)
    return checks.scalar("tau", tau, positive=True)


def _check_fuse_teachers(r_text, r_image, lam) -> float:
    checks.square("r_text", r_text)
    checks.square("r_image", r_image)
    checks.same_shape("r_text", r_text, "r_image", r_image)
    return checks.scalar("lam", lam)


# --- n(x) ------------------------------------------------------------------------------------------------------


def _normalize(x):
    """u = n(x) = x / max(||x||, eps), row-wise.  x: (B, D) -> u: (B, D).

    Backward. Where ||x|| > eps, u = x / ||x|| and d||x||/dx = x / ||x|| = u, so
        du_i/dx_j = (delta_ij - u_i u_j) / ||x||     (the projection away from u, divided by the norm)
    and for an upstream g: g_x = (g - u (u . g)) / ||x||.
    Where ||x|| <= eps the denominator is the constant eps, u = x / eps is linear, and g_x = g / eps.
    """
    norm = np.linalg.norm(x, axis=1, keepdims=True)  # (B, 1)
    safe = np.maximum(norm, NORM_EPS)  # (B, 1)
    u = x / safe  # (B, D)

    def back(g):
        along_u = np.where(norm > NORM_EPS, np.sum(u * g, axis=1, keepdims=True), 0.0)  # (B, 1)
        return (g - u * along_u) / safe

    return u, back


def normalize(x, *, grad_out=None):
    """Each row scaled to unit length: n(x) = x / max(||x||, NORM_EPS).  x: (B, D) -> (B, D); grads `x`."""
    x = checks.as_float_array("x", x)
    checks.array("x", x, 2, "(B, D)")
    u, back = _normalize(x)
    return u, {"x": back(_upstream(grad_out, u))}


# --- scaled cosine ------------------------------------------------------------------------------------------------


def _scaled_cosine(a, b, tau):
    """s = n(a) n(b)^T / tau: the cosine of every row of a with every row of b, divided by tau.
    a: (B, D), b: (C, D) -> s: (B, C).

    Backward for an upstream g (B, C): with ua = n(a), ub = n(b),
        g_ua = g ub / tau,   g_ub = g^T ua / tau,   g_tau = -sum(g * s) / tau   (since s is proportional to 1/tau),
    then through n(.) for each side. `back(g, inputs=False)` returns only g_tau (None for a and b).
    """
    ua, back_a = _normalize(a)
    ub, back_b = _normalize(b)
    s = ua @ ub.T / tau  # (B, C)

    def back(g, inputs=True):
        g_tau = -float(np.sum(g * s)) / tau
        if not inputs:  # only tau's gradient is wanted (e.g. a constant teacher): skip the (B, C, D) products
            return None, None, g_tau
        return back_a(g @ ub / tau), back_b(g.T @ ua / tau), g_tau

    return s, back


def _relation(x, tau):
    """S(x) = n(x) n(x)^T / tau, the scaled cosine of a batch with itself.  x: (B, D) -> (B, B).
    Both factors depend on x, so its gradient is the sum of the two sides' gradients."""
    s, back_pair = _scaled_cosine(x, x, tau)

    def back(g, inputs=True):
        g_left, g_right, g_tau = back_pair(g, inputs)
        return (g_left + g_right if inputs else None), g_tau

    return s, back


def cosine_relation(x, tau, *, grad_out=None):
    """The relation matrix of a batch, S(x)_ij = n(x_i) . n(x_j) / tau (no softmax).

    x: (B, D) raw features, B >= 2; tau > 0. Returns S (B, B) and grads `x` (B, D), `tau` (float).
    """
    x = checks.as_float_array("x", x)
    tau = _check_cosine_relation(x, tau)
    s, back = _relation(x, tau)
    g_x, g_tau = back(_upstream(grad_out, s))
    return s, {"x": g_x, "tau": g_tau}


# --- off-diagonal entries -------------------------------------------------------------------------------------------


def _offdiag(r):
    """The entries of r off its diagonal, row by row.  r: (B, B) -> (B (B - 1),).
    Backward: a selection, so the upstream gradient is scattered back to the selected places, zero on the
    diagonal."""
    mask = ~np.eye(r.shape[0], dtype=bool)  # (B, B)
    out = r[mask]  # boolean indexing walks the matrix row-major

    def back(g):
        g_r = np.zeros_like(r)
        g_r[mask] = g
        return g_r

    return out, back


def offdiag(r, *, grad_out=None):
    """The B (B - 1) off-diagonal entries of a (B, B) matrix, row-major: r[0,1], r[0,2], ..., r[1,0], r[1,2], ...

    Returns the vector and grads `r` (B, B), zero on the diagonal.
    """
    r = checks.as_float_array("r", r)
    checks.square("r", r)
    out, back = _offdiag(r)
    return out, {"r": back(_upstream(grad_out, out))}


# --- teacher fusion ---------------------------------------------------------------------------------------------------


def _fuse_teachers(r_text, r_image, lam):
    """E = lam r_text + (1 - lam) r_image.  r_text, r_image: (B, B) -> E: (B, B).
    Backward (linear in each argument): g_text = lam g, g_image = (1 - lam) g, g_lam = sum(g * (r_text - r_image))."""
    e = lam * r_text + (1.0 - lam) * r_image

    def back(g):
        return lam * g, (1.0 - lam) * g, float(np.sum(g * (r_text - r_image)))

    return e, back


def fuse_teachers(r_text, r_image, lam, *, grad_out=None):
    """The teachers' blended relation E = lam * r_text + (1 - lam) * r_image (lam weights the *text* teacher,
    unconstrained as in the official code). r_text, r_image: (B, B). Grads `r_text`, `r_image`, `lam` (float)."""
    r_text = checks.as_float_array("r_text", r_text)
    r_image = checks.as_float_array("r_image", r_image)
    lam = _check_fuse_teachers(r_text, r_image, lam)
    e, back = _fuse_teachers(r_text, r_image, lam)
    g_text, g_image, g_lam = back(_upstream(grad_out, e))
    return e, {"r_text": g_text, "r_image": g_image, "lam": g_lam}


def _upstream(grad_out, value):
    """The upstream gradient of `value`: all ones when `grad_out` is None (the gradient of value.sum()), else
    `grad_out` checked against the value's shape."""
    if grad_out is None:
        return np.ones_like(value)
    g = checks.as_float_array("grad_out", grad_out)
    checks.same_shape("grad_out", g, "the value", value)
    checks.finite("grad_out", g)
    return g
