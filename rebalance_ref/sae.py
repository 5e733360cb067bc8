"""A vision-language sparse autoencoder (VL-SAE style): one set of concept neurons shared by images and texts.

One shared encoder W (h, d) maps an embedding x (image v or text t, both D = d wide) to h concept activations;
two modality-specific linear decoders with bias map them back:

    x̂ = n(x),  ŵ_j = n(W_j)                                  unit input, unit encoder rows
    a_j(x) = 2 - ||x̂ - ŵ_j|| = 2 - sqrt(2 - 2 x̂ . ŵ_j)        distance-based activation, in [0, 2]
    a(x) = topk_k(a_1(x), ..., a_h(x))                        the k largest kept, the others set to 0
    D_V(a) = a W_V + b_V,   D_T(a) = a W_T + b_T              W_V, W_T: (h, d); b_V, b_T: (d,)
    loss = MSE(D_V(a(v)), v) + MSE(D_T(a(t)), t)              over paired rows (v_i, t_i)

There is no sparsity penalty and no explicit cross-modal term: top-k gives the sparsity, and because the encoder
is shared and its activation depends only on the distance to each neuron's direction, an image and a caption
whose embeddings lie close together switch on overlapping neurons.

Every public function returns `(value, grads)` as the rest of the reference does; `sae_activations` has an
array value and takes the keyword-only `grad_out` (the upstream gradient; default all ones).
"""

from __future__ import annotations

import numbers

import numpy as np

from rebalance_ref import checks
from rebalance_ref.relations import _normalize, _upstream

__all__ = ["sae_activations", "sae_loss"]


# --- input checks, shared with rebalance_torch.sae --------------------------------------------------------------


def _check_k(k, width: int) -> int:
    """k: an int in [1, h]."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= int(k) <= width:
        raise ValueError(f"k: expected an int in [1, {width}] (the active neurons per row, at most h), got {k!r}")
    return int(k)


def _check_activations(x, w_enc, k) -> int:
    """x (N, d), w_enc (h, d) of the same width, k in [1, h]. Returns k as an int."""
    checks.array("x", x, 2, "(N, d)")
    checks.array("w_enc", w_enc, 2, "(h, d)")
    if x.shape[1] != w_enc.shape[1]:
        raise ValueError(f"x and w_enc: expected the same width d, got {int(x.shape[1])} and {int(w_enc.shape[1])}")
    return _check_k(k, int(w_enc.shape[0]))


def _check_loss(v, t, w_enc, w_dec_v, b_dec_v, w_dec_t, b_dec_t, k) -> int:
    """Paired v, t (N, d); the encoder (h, d); each decoder (h, d) with a bias (d,). Returns k as an int."""
    checks.array("v", v, 2, "(N, d)")
    checks.array("t", t, 2, "(N, d)")
    checks.same_shape("v", v, "t", t)
    k = _check_activations(v, w_enc, k)
    for name, w in (("w_dec_v", w_dec_v), ("w_dec_t", w_dec_t)):
        checks.array(name, w, 2, "(h, d)")
        checks.same_shape(name, w, "w_enc", w_enc)
    for name, b in (("b_dec_v", b_dec_v), ("b_dec_t", b_dec_t)):
        checks.nonempty(name, b)
        if tuple(b.shape) != (int(v.shape[1]),):
            raise ValueError(f"{name}: expected shape ({int(v.shape[1])},) (d,), got {tuple(int(n) for n in b.shape)}")
    return k


# --- the pieces -------------------------------------------------------------------------------------------------


def _topk_mask(dense: np.ndarray, k: int) -> np.ndarray:
    """True at the k largest entries of each row.  dense: (N, h) -> (N, h) bool. Rows with a tie at the k-th
    largest value keep an arbitrary one of the tied entries (the gradient is piecewise: test away from ties)."""
    keep = np.zeros(dense.shape, dtype=bool)
    top = np.argpartition(-dense, k - 1, axis=1)[:, :k]  # (N, k), any order
    np.put_along_axis(keep, top, True, axis=1)
    return keep


def _activations(x, w_enc, k):
    """a = topk_k(2 - sqrt(2 - 2 n(x) n(W)^T)).  x: (N, d), w_enc: (h, d) -> a: (N, h), and back(g) -> (g_x, g_W).

    Backward. With c = x̂ ŵ^T (N, h) and r = sqrt(2 - 2c), the dense activation is 2 - r, so
        d(2 - r)/dc = -(1/(2r)) (-2) = 1/r;
    top-k is a selection: where it is kept the upstream passes, elsewhere the gradient is 0 (piecewise: the kept
    set is constant between ties of the k-th activation). Hence g_c = (g * keep) / r, then the product rule of
    c = x̂ ŵ^T gives g_x̂ = g_c ŵ and g_ŵ = g_c^T x̂, and n(.) carries each back to x and W (relations._normalize).
    r = 0 (an input exactly on a neuron's direction) has no derivative; 2 - 2c is clipped at 0 against rounding.
    """
    xh, back_x = _normalize(x)  # (N, d)
    wh, back_w = _normalize(w_enc)  # (h, d)
    c = xh @ wh.T  # (N, h) cosines
    r = np.sqrt(np.maximum(2.0 - 2.0 * c, 0.0))  # (N, h) distances ||x̂ - ŵ_j||
    dense = 2.0 - r  # (N, h) in [0, 2]
    keep = _topk_mask(dense, k)  # (N, h) bool
    a = np.where(keep, dense, 0.0)  # (N, h)

    def back(g):
        g_c = np.zeros_like(c)  # (N, h); only kept entries carry a gradient (and r > 0 there in practice)
        g_c[keep] = g[keep] / r[keep]
        return back_x(g_c @ wh), back_w(g_c.T @ xh)

    return a, back


def _linear(a, w, b):
    """y = a W + b.  a: (N, h), w: (h, d), b: (d,) -> (N, d).
    back(g) -> (g_a, g_W, g_b) = (g W^T, a^T g, the sum of g's rows)."""
    y = a @ w + b

    def back(g):
        return g @ w.T, a.T @ g, g.sum(axis=0)

    return y, back


def _mse(y, target):
    """mean((y - target)^2) over all entries.  y, target: (N, d) -> float; back(g) -> (g_y, g_target), with
    d/dy = 2 (y - target) / (N d) and d/dtarget its negative."""
    diff = y - target  # (N, d)
    value = float(np.mean(diff * diff))

    def back(g):
        g_y = g * 2.0 * diff / diff.size
        return g_y, -g_y

    return value, back


# --- public formulas ----------------------------------------------------------------------------------------------


def sae_activations(x, w_enc, k, *, grad_out=None):
    """The shared encoder's sparse concept activations: the k largest of a_j(x) = 2 - ||n(x) - n(w_enc_j)|| per
    row, the rest 0.  x: (N, d), w_enc: (h, d), k in [1, h] -> (N, h) in [0, 2]; grads `x`, `w_enc`."""
    x = checks.as_float_array("x", x)
    w_enc = checks.as_float_array("w_enc", w_enc)
    k = _check_activations(x, w_enc, k)
    a, back = _activations(x, w_enc, k)
    g_x, g_w = back(_upstream(grad_out, a))
    return a, {"x": g_x, "w_enc": g_w}


def sae_loss(v, t, w_enc, w_dec_v, b_dec_v, w_dec_t, b_dec_t, k):
    """The VL-SAE reconstruction loss MSE(D_V(a(v)), v) + MSE(D_T(a(t)), t) of paired embeddings.

    v, t: (N, d) paired image and text embeddings; w_enc: (h, d) the shared encoder; w_dec_v, w_dec_t: (h, d) and
    b_dec_v, b_dec_t: (d,) the two decoders D(a) = a W + b; k: active neurons per row. Returns the loss and grads
    of every array argument. v and t enter twice (through the encoder and as the target), and their gradients
    sum both paths.

    Backward: each MSE gives g_y = 2 (y - x) / (N d) for the reconstruction y and its negative for the target x;
    the decoder passes g_y to its weights (a^T g_y), bias (row sum) and activations (g_y W^T); the activations
    pass theirs to x and w_enc (`_activations`); w_enc sums the image and text paths.
    """
    v = checks.as_float_array("v", v)
    t = checks.as_float_array("t", t)
    w_enc = checks.as_float_array("w_enc", w_enc)
    w_dec_v, b_dec_v = checks.as_float_array("w_dec_v", w_dec_v), checks.as_float_array("b_dec_v", b_dec_v)
    w_dec_t, b_dec_t = checks.as_float_array("w_dec_t", w_dec_t), checks.as_float_array("b_dec_t", b_dec_t)
    k = _check_loss(v, t, w_enc, w_dec_v, b_dec_v, w_dec_t, b_dec_t, k)
    grads, value = {}, 0.0
    g_w_enc = np.zeros_like(w_enc)
    for x, w, b, side in ((v, w_dec_v, b_dec_v, "v"), (t, w_dec_t, b_dec_t, "t")):
        a, back_a = _activations(x, w_enc, k)  # (N, h)
        y, back_lin = _linear(a, w, b)  # (N, d) the reconstruction
        term, back_mse = _mse(y, x)
        value += term
        g_y, g_target = back_mse(1.0)
        g_a, grads[f"w_dec_{side}"], grads[f"b_dec_{side}"] = back_lin(g_y)
        g_x, g_w = back_a(g_a)
        grads[side] = g_x + g_target
        g_w_enc += g_w
    grads["w_enc"] = g_w_enc
    return value, {k_: grads[k_] for k_ in ("v", "t", "w_enc", "w_dec_v", "b_dec_v", "w_dec_t", "b_dec_t")}
