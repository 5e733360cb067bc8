"""LIMoE's per-modality routing-entropy losses in PyTorch: the mirror of `rebalance_ref.experts` (same names,
arguments and checks; formulas and backward documented there). The mixture-of-experts layer that produces the
router logits is `rebalance_torch.moe`.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()`."""

from __future__ import annotations

import torch

from rebalance_ref.experts import _check_global, _check_logits
from rebalance_torch import input_checks

__all__ = ["local_entropy", "global_entropy"]


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """-sum_e p_e log p_e per row, 0 log 0 = 0.  p: (N, E) -> (N,)."""
    return -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)


def local_entropy(logits: torch.Tensor) -> torch.Tensor:
    """mean_i H(softmax(z_i)).  logits: (N, E) -> 0-d."""
    if input_checks.enabled():
        _check_logits(logits)
    return _entropy(torch.softmax(logits, dim=1)).mean()


def global_entropy(logits: torch.Tensor, threshold) -> torch.Tensor:
    """max(0, threshold - H(mean_i softmax(z_i))).  logits: (N, E) -> 0-d."""
    if input_checks.enabled():
        _check_global(logits, threshold)
    p_bar = torch.softmax(logits, dim=1).mean(dim=0, keepdim=True)  # (1, E)
    return (threshold - _entropy(p_bar)[0]).clamp(min=0.0)
