"""The cross-modal hashing head and its losses in PyTorch: the mirror of `rebalance_ref.hashing` (same names,
arguments and checks; the formulas, where each comes from, and their backward are documented there and in
docs/codes.md). Each function returns a tensor and autograd supplies the gradients.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()` (the
head's training loop after its first step, and the ONNX export's trace)."""

from __future__ import annotations

import torch

from rebalance_ref.hashing import _check_head, _check_loss, _check_target, _check_weights
from rebalance_torch import input_checks
from rebalance_torch.losses import itc
from rebalance_torch.relations import _relation

__all__ = ["hash_head", "code_target", "hash_loss"]


def _head(z: torch.Tensor, w: torch.Tensor, w_gate: torch.Tensor, b_gate: torch.Tensor, alpha) -> torch.Tensor:
    """h = tanh(alpha (m * z) W^T), m = sigmoid(z W_g^T + b_g).  z: (B, D) -> (B, bits)."""
    m = torch.sigmoid(z @ w_gate.T + b_gate)  # (B, D) the mask
    return torch.tanh(alpha * ((m * z) @ w.T))


def _gram_fit(a: torch.Tensor, b: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """mean((a b^T / bits - S)^2).  a, b: (B, bits), s: (B, B) -> 0-d."""
    return torch.mean((a @ b.T / a.shape[1] - s) ** 2)


def _quantization(h: torch.Tensor) -> torch.Tensor:
    """mean((|h| - 1)^2).  (B, bits) -> 0-d."""
    return torch.mean((h.abs() - 1.0) ** 2)


def _balance(h: torch.Tensor) -> torch.Tensor:
    """||mean over rows of h||^2.  (B, bits) -> 0-d."""
    mean = h.mean(dim=0)
    return mean @ mean


def hash_head(z: torch.Tensor, w: torch.Tensor, w_gate: torch.Tensor, b_gate: torch.Tensor, alpha) -> torch.Tensor:
    """Relaxed codes h = tanh(alpha (m * z) W^T), m = sigmoid(z W_g^T + b_g).  z: (B, D), w: (bits, D),
    w_gate: (D, D), b_gate: (D,), alpha > 0 -> (B, bits) in (-1, 1)."""
    if input_checks.enabled():
        _check_head(z, w, w_gate, b_gate, alpha)
    return _head(z, w, w_gate, b_gate, alpha)


def code_target(v: torch.Tensor, t: torch.Tensor, beta=0.5, eta=0.4, mu=1.0) -> torch.Tensor:
    """S = mu ((1 - eta) S~ + eta S~ S~^T / B), S~ = beta n(v) n(v)^T + (1 - beta) n(t) n(t)^T.
    v, t: (B, D) -> (B, B)."""
    if input_checks.enabled():
        _check_target(v, t, beta, eta, mu)
    blend = beta * _relation(v, 1.0) + (1.0 - beta) * _relation(t, 1.0)
    return mu * ((1.0 - eta) * blend + eta * (blend @ blend.T) / v.shape[0])


def hash_loss(v: torch.Tensor, t: torch.Tensor, s: torch.Tensor, w_i: torch.Tensor, w_gate_i: torch.Tensor,
              b_gate_i: torch.Tensor, w_t: torch.Tensor, w_gate_t: torch.Tensor, b_gate_t: torch.Tensor, alpha, tau,
              idx=None, weights=None) -> torch.Tensor:
    """contrast + cross + intra + quant + balance, weighted (rebalance_ref.hashing.hash_loss).  v, t: (B, D);
    s: (B, B); the heads' arrays as in `hash_head`; idx: (B,) image ids or None -> 0-d."""
    if input_checks.enabled():
        _, _, _, weights = _check_loss(v, t, s, ((w_i, w_gate_i, b_gate_i), (w_t, w_gate_t, b_gate_t)), alpha, tau,
                                       idx, weights)
    else:
        weights = _check_weights(weights)
    h_i = _head(v, w_i, w_gate_i, b_gate_i, alpha)
    h_t = _head(t, w_t, w_gate_t, b_gate_t, alpha)
    loss = weights["contrast"] * itc(h_i, h_t, tau, idx)
    loss = loss + weights["cross"] * _gram_fit(h_i, h_t, s)
    loss = loss + weights["intra"] * (_gram_fit(h_i, h_i, s) + _gram_fit(h_t, h_t, s))
    loss = loss + weights["quant"] * (_quantization(h_i) + _quantization(h_t))
    return loss + weights["balance"] * (_balance(h_i) + _balance(h_t))
