"""A cross-modal hashing head and its losses (AHLR-style: dynamic masking and an auxiliary hash loss).

Only the title and abstract of AHLR ("Dynamic Masking and Auxiliary Hash Learning for Enhanced Cross-Modal
Retrieval") are public; its formulas are not. What is here is the closest version we could build from public
stand-ins, and every piece says where it comes from:

    m = sigmoid(z W_g^T + b_g)                      a per-input channel mask on the unit embedding z   [ours: our
                                                    reading of "dynamic masking"]
    h = tanh(alpha (m * z) W^T)                     `bits` relaxed code entries in (-1, 1); sign(h) at test time;
                                                    alpha grows over training (DJSRH: sqrt(epoch + 1))
    S~ = beta n(v) n(v)^T + (1 - beta) n(t) n(t)^T  the student's own cosine matrices, blended          [DJSRH]
    S = mu ((1 - eta) S~ + eta S~ S~^T / B)         plus second-order neighbourhood agreement           [DJSRH]
    loss = w_contrast InfoNCE(n(h_I), n(h_T))       cross-modal contrast on the relaxed codes           [generic]
         + w_cross mean((h_I h_T^T / bits - S)^2)   code inner products reproduce the float structure  [DJSRH]
         + w_intra [mean((h_I h_I^T / bits - S)^2) + mean((h_T h_T^T / bits - S)^2)]                 [DJSRH]
         + w_quant [mean((|h_I| - 1)^2) + mean((|h_T| - 1)^2)]       quantisation: entries near +-1  [generic]
         + w_balance [||mean_rows h_I||^2 + ||mean_rows h_T||^2]     bit balance: each bit half on   [DCMH]

The image and text heads take separate parameters; a shared head is the same arrays passed twice (its gradient
is the sum of the two). The contrast term is `rebalance_ref.losses.itc` on the codes (normalised inside), with
the image ids `idx` as soft labels. S is a constant target for the loss (computed by `code_target` from the
frozen embeddings); `hash_loss` still returns its gradient, -(the fit terms' gradient), for completeness.

Every public function returns `(value, grads)` as the rest of the reference does; array values take the
keyword-only `grad_out` (the upstream gradient; default all ones).
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks
from rebalance_ref.losses import _check_pair_contrast, itc
from rebalance_ref.relations import _relation, _upstream

__all__ = ["hash_head", "code_target", "hash_loss"]

# The terms of `hash_loss`, and the weight each gets when `weights` leaves it out. contrast and cross are the two
# main terms (weight 1); intra, quant and balance are regularisers (DJSRH's lambda_1 = lambda_2 = 0.1 for intra,
# ours for quant and balance).
HASH_WEIGHTS = {"contrast": 1.0, "cross": 1.0, "intra": 0.1, "quant": 0.1, "balance": 0.1}


# --- input checks, shared with rebalance_torch.hashing ----------------------------------------------------------


def _check_head(z, w, w_gate, b_gate, alpha, z_name="z", suffix="") -> float:
    """z (B, D); w (bits, D); w_gate (D, D); b_gate (D,); alpha > 0. Returns alpha as a float."""
    checks.array(z_name, z, 2, "(B, D)")
    checks.array(f"w{suffix}", w, 2, "(bits, D)")
    checks.array(f"w_gate{suffix}", w_gate, 2, "(D, D)")
    checks.nonempty(f"b_gate{suffix}", b_gate)
    d = int(z.shape[1])
    if int(w.shape[1]) != d:
        raise ValueError(f"w{suffix}: expected width D = {d} (the embeddings' width), got shape "
                         f"{tuple(int(n) for n in w.shape)}")
    if tuple(int(n) for n in w_gate.shape) != (d, d):
        raise ValueError(f"w_gate{suffix}: expected shape ({d}, {d}) (D, D), got {tuple(int(n) for n in w_gate.shape)}")
    if tuple(int(n) for n in b_gate.shape) != (d,):
        raise ValueError(f"b_gate{suffix}: expected shape ({d},) (D,), got {tuple(int(n) for n in b_gate.shape)}")
    return checks.scalar("alpha", alpha, positive=True)


def _check_target(v, t, beta, eta, mu) -> tuple[float, float, float]:
    """Paired v, t (B, D) with B >= 2; finite beta, eta, mu. Returns them as floats."""
    checks.array("v", v, 2, "(B, D)", min_rows=2)
    checks.array("t", t, 2, "(B, D)", min_rows=2)
    checks.same_shape("v", v, "t", t)
    return checks.scalar("beta", beta), checks.scalar("eta", eta), checks.scalar("mu", mu)


def _check_weights(weights) -> dict[str, float]:
    """{term: weight} over HASH_WEIGHTS' names; a missing name takes its default, an unknown one is refused."""
    if weights is None:
        return dict(HASH_WEIGHTS)
    if not hasattr(weights, "items"):
        raise ValueError(f"weights: expected a dict with keys among {tuple(HASH_WEIGHTS)}, got "
                         f"{type(weights).__name__}")
    unknown = sorted(set(weights) - set(HASH_WEIGHTS))
    if unknown:
        raise ValueError(f"weights: expected keys among {tuple(HASH_WEIGHTS)}, got unknown {unknown}")
    return {k: checks.scalar(f"weights[{k!r}]", weights.get(k, default)) for k, default in HASH_WEIGHTS.items()}


def _check_loss(v, t, s, heads, alpha, tau, idx, weights):
    """v, t (B, D) paired; s (B, B); two heads of the same bits; tau > 0. Returns (alpha, tau, ids, weights)."""
    alpha = _check_head(v, *heads[0], alpha, z_name="v", suffix="_i")
    _check_head(t, *heads[1], alpha, z_name="t", suffix="_t")
    tau, ids = _check_pair_contrast("v", v, "t", t, tau, idx)
    if int(heads[0][0].shape[0]) != int(heads[1][0].shape[0]):
        raise ValueError(f"w_i and w_t: expected the same number of bits, got {int(heads[0][0].shape[0])} and "
                         f"{int(heads[1][0].shape[0])}")
    checks.square("s", s, min_rows=1)
    if int(s.shape[0]) != int(v.shape[0]):
        raise ValueError(f"s: expected shape ({int(v.shape[0])}, {int(v.shape[0])}) (B, B), got "
                         f"{tuple(int(n) for n in s.shape)}")
    return alpha, tau, ids, _check_weights(weights)


# --- the pieces -------------------------------------------------------------------------------------------------


def _sigmoid(a):
    """1 / (1 + exp(-a)), without overflow for large |a|."""
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _head(z, w, w_gate, b_gate, alpha):
    """h = tanh(alpha (m * z) W^T), m = sigmoid(z W_g^T + b_g).  z: (B, D), w: (bits, D), w_gate: (D, D),
    b_gate: (D,) -> h: (B, bits), and back(g) -> (g_z, g_w, g_w_gate, g_b_gate, g_alpha).

    Backward. With p = x W^T (the pre-activation) and x = m * z:
        g_p = g (1 - h^2) alpha,  g_alpha = sum(g (1 - h^2) p),  g_W = g_p^T x,  g_x = g_p W;
    the mask: g_m = g_x * z, and through the sigmoid g_a = g_m m (1 - m), so g_W_g = g_a^T z, g_b_g = sum of the
    rows of g_a; z is reached twice, directly (g_x * m) and through the gate (g_a W_g).
    """
    m = _sigmoid(z @ w_gate.T + b_gate)  # (B, D) the mask
    x = m * z  # (B, D) masked embedding
    p = x @ w.T  # (B, bits)
    h = np.tanh(alpha * p)  # (B, bits)

    def back(g):
        g_tanh = g * (1.0 - h * h)  # (B, bits) dh / d(alpha p)
        g_p = alpha * g_tanh
        g_x = g_p @ w  # (B, D)
        g_a = g_x * z * m * (1.0 - m)  # (B, D) into the gate's pre-activation
        g_z = g_x * m + g_a @ w_gate
        return g_z, g_p.T @ x, g_a.T @ z, g_a.sum(axis=0), float(np.sum(g_tanh * p))

    return h, back


def _target(v, t, beta, eta, mu):
    """S = mu ((1 - eta) S~ + eta S~ S~^T / B), S~ = beta n(v) n(v)^T + (1 - beta) n(t) n(t)^T.
    v, t: (B, D) -> S: (B, B), and back(g) -> (g_v, g_t).

    Backward. S~ is symmetric, so d sum(g * S~ S~^T) / dS~ = g S~ + g^T S~ = (g + g^T) S~; hence
        g_S~ = mu ((1 - eta) g + eta (g + g^T) S~ / B),
    then g_S~ times beta (resp. 1 - beta) through each cosine relation (rebalance_ref.relations._relation).
    """
    b = v.shape[0]
    s_v, back_v = _relation(v, 1.0)  # (B, B)
    s_t, back_t = _relation(t, 1.0)
    blend = beta * s_v + (1.0 - beta) * s_t  # (B, B) S~
    s = mu * ((1.0 - eta) * blend + eta * (blend @ blend.T) / b)

    def back(g):
        g_blend = mu * ((1.0 - eta) * g + eta * ((g + g.T) @ blend) / b)
        return back_v(beta * g_blend)[0], back_t((1.0 - beta) * g_blend)[0]

    return s, back


def _gram_fit(a, b, s):
    """mean((a b^T / bits - S)^2) over the B x B entries.  a, b: (B, bits), s: (B, B) -> float, and
    back(g) -> (g_a, g_b, g_s) = (g_R b / bits, g_R^T a / bits, -g_R) with g_R = 2 g R / B^2, R the residual."""
    bits = a.shape[1]
    r = a @ b.T / bits - s  # (B, B)
    value = float(np.mean(r * r))

    def back(g):
        g_r = g * 2.0 * r / r.size
        return g_r @ b / bits, g_r.T @ a / bits, -g_r

    return value, back


def _quantization(h):
    """mean((|h| - 1)^2): how far relaxed entries are from +-1.  h: (B, bits) -> float; back(g) -> g_h =
    2 g (|h| - 1) sign(h) / (B bits). |.| has a kink at h = 0 (the gradient there is 0, sign(0) = 0)."""
    dev = np.abs(h) - 1.0
    value = float(np.mean(dev * dev))

    def back(g):
        return g * 2.0 * dev * np.sign(h) / h.size

    return value, back


def _balance(h):
    """||mean over rows of h||^2: 0 when every bit is on for half of the batch.  h: (B, bits) -> float;
    back(g) -> g_h = 2 g mean(h) / B, the same for every row."""
    mean = h.mean(axis=0)  # (bits,)
    value = float(mean @ mean)

    def back(g):
        return np.broadcast_to(g * 2.0 * mean / h.shape[0], h.shape).copy()

    return value, back


# --- public formulas ----------------------------------------------------------------------------------------------


def hash_head(z, w, w_gate, b_gate, alpha, *, grad_out=None):
    """The relaxed codes of a batch: h = tanh(alpha (m * z) W^T) with the per-input channel mask
    m = sigmoid(z W_g^T + b_g).

    z: (B, D) embeddings; w: (bits, D) the hash projection; w_gate: (D, D) and b_gate: (D,) the mask; alpha > 0
    the tanh's sharpness. Returns h (B, bits) in (-1, 1) and grads `z`, `w`, `w_gate`, `b_gate`, `alpha`. The
    code is sign(h) > 0, which does not depend on alpha."""
    z, w = checks.as_float_array("z", z), checks.as_float_array("w", w)
    w_gate, b_gate = checks.as_float_array("w_gate", w_gate), checks.as_float_array("b_gate", b_gate)
    alpha = _check_head(z, w, w_gate, b_gate, alpha)
    h, back = _head(z, w, w_gate, b_gate, alpha)
    g_z, g_w, g_wg, g_bg, g_alpha = back(_upstream(grad_out, h))
    return h, {"z": g_z, "w": g_w, "w_gate": g_wg, "b_gate": g_bg, "alpha": g_alpha}


def code_target(v, t, beta=0.5, eta=0.4, mu=1.0, *, grad_out=None):
    """The similarity the codes should reproduce (DJSRH's joint-semantics matrix, from the student's own cosines):
    S = mu ((1 - eta) S~ + eta S~ S~^T / B) with S~ = beta n(v) n(v)^T + (1 - beta) n(t) n(t)^T.

    v, t: (B, D) paired image and text embeddings, B >= 2; beta weighs the image side; eta mixes in second-order
    agreement (two items whose neighbourhoods agree); mu scales. Returns S (B, B) and grads `v`, `t`."""
    v, t = checks.as_float_array("v", v), checks.as_float_array("t", t)
    beta, eta, mu = _check_target(v, t, beta, eta, mu)
    s, back = _target(v, t, beta, eta, mu)
    g_v, g_t = back(_upstream(grad_out, s))
    return s, {"v": g_v, "t": g_t}


def hash_loss(v, t, s, w_i, w_gate_i, b_gate_i, w_t, w_gate_t, b_gate_t, alpha, tau, idx=None, weights=None):
    """The hashing head's training loss on paired embeddings (the module's docstring gives every term):
    contrast + cross + intra + quant + balance, each weighted (`weights`: {term: weight}, missing terms take
    HASH_WEIGHTS').

    v, t: (B, D) paired image and text embeddings; s: (B, B) the target (`code_target`); w_i, w_gate_i, b_gate_i
    the image head and w_t, w_gate_t, b_gate_t the text head (`hash_head`'s shapes, the same bits); alpha > 0;
    tau > 0 the contrast's temperature; idx: (B,) image ids (soft labels) or None. Returns the loss and grads of
    `v`, `t`, `s`, every head array, `alpha` and `tau`.

    Backward: each term's gradient with respect to h_I and h_T (`itc`'s, and the `_gram_fit`, `_quantization`,
    `_balance` closures'), weighted and summed, then through each head (`_head`).
    """
    names = ("v", "t", "s", "w_i", "w_gate_i", "b_gate_i", "w_t", "w_gate_t", "b_gate_t")
    arrays = {n: checks.as_float_array(n, a) for n, a in zip(names, (v, t, s, w_i, w_gate_i, b_gate_i, w_t,
                                                                     w_gate_t, b_gate_t), strict=True)}
    v, t, s = arrays["v"], arrays["t"], arrays["s"]
    head_i = (arrays["w_i"], arrays["w_gate_i"], arrays["b_gate_i"])
    head_t = (arrays["w_t"], arrays["w_gate_t"], arrays["b_gate_t"])
    alpha, tau, ids, weights = _check_loss(v, t, s, (head_i, head_t), alpha, tau, idx, weights)
    h_i, back_i = _head(v, *head_i, alpha)
    h_t, back_t = _head(t, *head_t, alpha)
    g_hi, g_ht, g_s = np.zeros_like(h_i), np.zeros_like(h_t), np.zeros_like(s)
    value = 0.0

    # contrast: itc on the codes (normalised inside)
    term, grads = itc(h_i, h_t, tau, ids)
    value += weights["contrast"] * term
    g_hi += weights["contrast"] * grads["v"]
    g_ht += weights["contrast"] * grads["t"]
    g_tau = weights["contrast"] * grads["tau"]

    # cross and intra: code inner products against S
    for a, b, weight, into_a, into_b in ((h_i, h_t, weights["cross"], g_hi, g_ht),
                                         (h_i, h_i, weights["intra"], g_hi, g_hi),
                                         (h_t, h_t, weights["intra"], g_ht, g_ht)):
        term, back = _gram_fit(a, b, s)
        value += weight * term
        d_a, d_b, d_s = back(weight)
        into_a += d_a
        into_b += d_b
        g_s += d_s

    # quantisation and balance, per modality
    for h, into in ((h_i, g_hi), (h_t, g_ht)):
        for fn, name in ((_quantization, "quant"), (_balance, "balance")):
            term, back = fn(h)
            value += weights[name] * term
            into += back(weights[name])

    g_v, g_wi, g_wgi, g_bgi, g_alpha_i = back_i(g_hi)
    g_t, g_wt, g_wgt, g_bgt, g_alpha_t = back_t(g_ht)
    return value, {"v": g_v, "t": g_t, "s": g_s, "w_i": g_wi, "w_gate_i": g_wgi, "b_gate_i": g_bgi, "w_t": g_wt,
                   "w_gate_t": g_wgt, "b_gate_t": g_bgt, "alpha": g_alpha_i + g_alpha_t, "tau": g_tau}
