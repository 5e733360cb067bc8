"""The vision-language sparse autoencoder in PyTorch: the mirror of `rebalance_ref.sae` (same names, arguments and
checks; the formulas and their backward are documented there). Each function returns a tensor and autograd
supplies the gradients."""

from __future__ import annotations

import torch

from rebalance_ref.sae import _check_activations, _check_loss
from rebalance_torch.relations import _normalize

__all__ = ["sae_activations", "sae_loss"]


def _activations(x: torch.Tensor, w_enc: torch.Tensor, k: int) -> torch.Tensor:
    """a = topk_k(2 - sqrt(2 - 2 n(x) n(W)^T)).  x: (N, d), w_enc: (h, d) -> (N, h)."""
    c = _normalize(x) @ _normalize(w_enc).T  # (N, h) cosines
    dense = 2.0 - torch.sqrt(torch.clamp(2.0 - 2.0 * c, min=0.0))  # (N, h) in [0, 2]
    top = torch.topk(dense, k, dim=1).indices  # (N, k)
    keep = torch.zeros_like(dense, dtype=torch.bool).scatter_(1, top, True)
    return torch.where(keep, dense, torch.zeros((), dtype=dense.dtype, device=dense.device))


def sae_activations(x: torch.Tensor, w_enc: torch.Tensor, k) -> torch.Tensor:
    """The k largest of a_j(x) = 2 - ||n(x) - n(w_enc_j)|| per row, the rest 0.  x: (N, d), w_enc: (h, d) ->
    (N, h) in [0, 2]."""
    k = _check_activations(x, w_enc, k)
    return _activations(x, w_enc, k)


def sae_loss(v: torch.Tensor, t: torch.Tensor, w_enc: torch.Tensor, w_dec_v: torch.Tensor, b_dec_v: torch.Tensor,
             w_dec_t: torch.Tensor, b_dec_t: torch.Tensor, k) -> torch.Tensor:
    """MSE(D_V(a(v)), v) + MSE(D_T(a(t)), t) with D(a) = a W + b.  v, t: (N, d); w_enc, w_dec_*: (h, d);
    b_dec_*: (d,) -> 0-d."""
    k = _check_loss(v, t, w_enc, w_dec_v, b_dec_v, w_dec_t, b_dec_t, k)
    loss = v.new_zeros(())
    for x, w, b in ((v, w_dec_v, b_dec_v), (t, w_dec_t, b_dec_t)):
        y = _activations(x, w_enc, k) @ w + b  # (N, d)
        loss = loss + torch.mean((y - x) ** 2)
    return loss
