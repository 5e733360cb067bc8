"""Distances between relation entries in PyTorch: the mirror of `rebalance_ref.distances` (same names, arguments
and checks); each returns a 0-d tensor and autograd supplies the gradients (|.| has gradient sign(.), 0 at 0)."""

from __future__ import annotations

import torch

from rebalance_ref.checks import DISTANCES
from rebalance_ref.distances import _check_pair, _check_wasserstein

__all__ = ["mae", "mse", "cumsum_l1", "wasserstein"]


def _mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |x - y| over all entries."""
    return (x - y).abs().mean()


def _mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean (x - y)^2 over all entries."""
    d = x - y
    return (d * d).mean()


def _cumsum_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |cumsum x - cumsum y| over the row-major flattened vectors (the official "kl")."""
    return (torch.cumsum(x.reshape(-1), 0) - torch.cumsum(y.reshape(-1), 0)).abs().mean()


def _wasserstein(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """mean over rows of the weighted 1-D Wasserstein-1 distance between x[r] and y[r], both weighted by w[r].
    x, y, w: (B, M) -> 0-d. The area between the two CDFs over the stably sorted merged support (see the NumPy
    reference for the derivation): gradients reach the values through the gaps of the sorted support and the
    weights through the running sums; the sort order itself is piecewise constant."""
    both = torch.cat([x, y], dim=1)  # (B, 2M)
    order = torch.argsort(both, dim=1, stable=True)
    s = both.gather(1, order)  # sorted support
    signed = torch.cat([w, -w], dim=1).gather(1, order)  # +w for an x atom, -w for a y atom
    gap = torch.cumsum(signed, dim=1)[:, :-1] / w.sum(dim=1, keepdim=True)  # (B, 2M-1) F_mu - F_nu
    return (gap.abs() * torch.diff(s, dim=1)).sum(dim=1).mean()


def mae(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error mean|x - y| over all entries (same shape)."""
    _check_pair(x, y)
    return _mae(x, y)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error mean (x - y)^2 over all entries (same shape)."""
    _check_pair(x, y)
    return _mse(x, y)


def cumsum_l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean|cumsum x - cumsum y| over the row-major flattened vectors (the official code's "kl")."""
    _check_pair(x, y)
    return _cumsum_l1(x, y)


def wasserstein(x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Row-wise weighted 1-D Wasserstein-1 distance between x[r] and y[r], both weighted by weights[r], averaged
    over rows. x, y, weights: (B, M); weights >= 0 with a positive sum in every row."""
    _check_wasserstein(x, y, weights)
    return _wasserstein(x, y, weights)


# The private forms by public name, for the composite structure distillation.
_FORMS = {name: globals()[f"_{name}"] for name in DISTANCES}
