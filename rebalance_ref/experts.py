"""LIMoE's routing-entropy losses (NeurIPS 2022) for a mixture-of-experts layer, per modality.

A router gives each token x_i of one modality the logits z_i (E,) over E experts and the probabilities
p_i = softmax(z_i). LIMoE adds two terms per modality m (in our student a modality is a tower: the image tower's
tokens or the text tower's, see docs/experts.md):

- the local entropy, minimised, so that each token commits to few experts;
- the thresholded global entropy, so that the modality as a whole still spreads over at least S experts:
  it is zero once the entropy of the modality's mean routing reaches log S, and pushes it up below that.

H(p) = -sum_e p_e log p_e (natural log). Every public function returns `(value, grads)` as in
`rebalance_ref.losses`, the gradient with respect to the logits.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref import checks

__all__ = ["local_entropy", "global_entropy"]


def _check_logits(logits):
    """Router logits (N, E): N >= 1 tokens, E >= 2 experts, finite."""
    checks.array("logits", logits, 2, "(N, E)")
    if logits.shape[1] < 2:
        raise ValueError(f"logits: expected E >= 2 experts (columns), got shape {tuple(logits.shape)}")


def _check_global(logits, threshold) -> float:
    _check_logits(logits)
    threshold = checks.scalar("threshold", threshold)
    if threshold < 0:
        raise ValueError(f"threshold: expected an entropy >= 0 (log S for S experts), got {threshold}")
    return threshold


def _softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _entropy(p):
    """H of each row of p (rows summing to 1) and log p; 0 log 0 = 0.  p: (N, E) -> (N,), (N, E)."""
    log_p = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * log_p, axis=1), log_p


def local_entropy(logits):
    """How undecided each token's routing is, on average (minimised: confident routing):
        Omega_local = mean_i H(softmax(z_i)).
    logits: (N, E). Grads `logits` (N, E).

    Backward. With p = softmax(z), dH/dp_k = -(log p_k + 1) and dp_k/dz_j = p_k (delta_kj - p_j), so
        dH/dz_j = -p_j (log p_j + H);
    the mean over tokens divides by N.
    """
    z = checks.as_float_array("logits", logits)
    _check_logits(z)
    p = _softmax_rows(z)  # (N, E)
    h, log_p = _entropy(p)  # (N,), (N, E)
    n = z.shape[0]
    return float(h.mean()), {"logits": -p * (log_p + h[:, None]) / n}


def global_entropy(logits, threshold):
    """How far the modality's mean routing is from using at least S experts (zero once it is):
        p_bar = mean_i softmax(z_i),   Omega_global = max(0, threshold - H(p_bar)),   threshold = log S.
    logits: (N, E); threshold >= 0. Grads `logits` (N, E); zero where the hinge is inactive.

    Backward. Where threshold > H(p_bar), dOmega/dp_bar_k = log p_bar_k + 1 =: a_k, and p_bar_k = (1/N) sum_i p_ik
    with dp_ik/dz_ij = p_ik (delta_kj - p_ij), so
        dOmega/dz_ij = (1/N) p_ij (a_j - sum_k p_ik a_k).
    At the kink threshold = H(p_bar) the function is not differentiable; we return the zero (inactive) side.
    """
    z = checks.as_float_array("logits", logits)
    threshold = _check_global(z, threshold)
    p = _softmax_rows(z)  # (N, E)
    p_bar = p.mean(axis=0, keepdims=True)  # (1, E)
    h_bar, log_p_bar = _entropy(p_bar)
    gap = threshold - float(h_bar[0])
    if gap <= 0:
        return 0.0, {"logits": np.zeros_like(z)}
    a = log_p_bar + 1.0  # (1, E)
    g = p * (a - np.sum(p * a, axis=1, keepdims=True)) / z.shape[0]
    return gap, {"logits": g}
