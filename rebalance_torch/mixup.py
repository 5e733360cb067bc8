"""m²-Mix in PyTorch: the mirror of `rebalance_ref.mixup` (same names, arguments and checks; the formulas, the
safe small-angle rule and the backward are documented there and in docs/mixup.md). Autograd supplies the
gradients; `torch.where` keeps the discarded branch of slerp at a safe angle so that no NaN reaches them.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()`."""

from __future__ import annotations

import torch

from rebalance_ref import checks
from rebalance_ref.losses import _check_pair_contrast
from rebalance_ref.mixup import _check_lam
from rebalance_ref.tolerances import SLERP_COS_CLAMP, SLERP_MIN_ANGLE
from rebalance_torch import input_checks
from rebalance_torch.gcl import _masked_soft_cross_entropy
from rebalance_torch.relations import _normalize

__all__ = ["slerp", "m2_mix"]


def _slerp(u: torch.Tensor, w: torch.Tensor, lam) -> torch.Tensor:
    """Row-wise slerp of unit vectors, normalised lerp below SLERP_MIN_ANGLE.  (B, D), (B, D) -> (B, D)."""
    c = (u * w).sum(dim=1, keepdim=True).clamp(-1.0 + SLERP_COS_CLAMP, 1.0)  # (B, 1)
    geodesic = torch.arccos(c.detach()) >= SLERP_MIN_ANGLE  # the reference's branch choice
    # the lerp rows take arccos at a safe cosine, so that no infinite derivative of arccos at 1 meets a zero
    th = torch.where(geodesic, torch.arccos(torch.where(geodesic, c, torch.zeros_like(c))), torch.ones_like(c))
    sin_th = torch.sin(th)
    mixed = torch.sin(lam * th) / sin_th * u + torch.sin((1.0 - lam) * th) / sin_th * w
    return torch.where(geodesic, mixed, _normalize(lam * u + (1.0 - lam) * w))


def slerp(a: torch.Tensor, b: torch.Tensor, lam) -> torch.Tensor:
    """Geodesic mixup m_lam(n(a), n(b)) of row pairs (lam = 1 gives n(a)).  a, b: (B, D); lam in [0, 1]."""
    checks.array("a", a, 2, "(B, D)")
    checks.array("b", b, 2, "(B, D)")
    checks.same_shape("a", a, "b", b)
    _check_lam(lam)
    return _slerp(_normalize(a), _normalize(b), lam)


def m2_mix(v: torch.Tensor, t: torch.Tensor, lam, tau, idx=None) -> torch.Tensor:
    """CE_rows(A^I, I) + CE_rows(A^T, I) with the mixed embeddings m_j = slerp(v_j, t_j, lam) as the off-diagonal
    keys (same-image rows masked).  v, t: (B, D); lam in [0, 1]; tau > 0; idx: (B,) or None."""
    if input_checks.enabled():
        _check_pair_contrast("v", v, "t", t, tau, idx)
        _check_lam(lam)
    batch = v.shape[0]
    u, w = _normalize(v), _normalize(t)
    m = _slerp(u, w, lam)
    eye = torch.eye(batch, dtype=torch.bool, device=v.device)
    if idx is None:
        keep = torch.ones_like(eye)
    else:
        ids = torch.as_tensor(idx, device=v.device)
        keep = ~((ids[:, None] == ids[None, :]) & ~eye)
    pos = (u * w).sum(dim=1, keepdim=True) / tau  # (B, 1)
    a_img = torch.where(eye, pos, u @ m.T / tau)
    a_txt = torch.where(eye, pos, w @ m.T / tau)
    y = eye.to(v.dtype)
    return _masked_soft_cross_entropy(a_img, y, keep) + _masked_soft_cross_entropy(a_txt, y, keep)
