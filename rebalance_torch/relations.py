"""Relation matrices of a batch in PyTorch: the mirror of `rebalance_ref.relations` (same names, same arguments,
same checks); each function returns the value as a tensor and autograd supplies the gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rebalance_ref import checks
from rebalance_ref.relations import _check_cosine_relation, _check_fuse_teachers
from rebalance_ref.tolerances import NORM_EPS

__all__ = ["normalize", "cosine_relation", "offdiag", "fuse_teachers"]


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """n(x) = x / max(||x||, NORM_EPS), row-wise.  (B, D) -> (B, D)."""
    return F.normalize(x, dim=1, eps=NORM_EPS)


def _scaled_cosine(a: torch.Tensor, b: torch.Tensor, tau) -> torch.Tensor:
    """s = n(a) n(b)^T / tau.  a: (B, D), b: (C, D) -> (B, C)."""
    return _normalize(a) @ _normalize(b).T / tau


def _relation(x: torch.Tensor, tau) -> torch.Tensor:
    """S(x) = n(x) n(x)^T / tau.  (B, D) -> (B, B)."""
    return _scaled_cosine(x, x, tau)


def _offdiag(r: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of r, row-major.  (B, B) -> (B (B - 1),)."""
    return r[~torch.eye(r.shape[0], dtype=torch.bool, device=r.device)]


def _fuse_teachers(r_text: torch.Tensor, r_image: torch.Tensor, lam) -> torch.Tensor:
    """E = lam r_text + (1 - lam) r_image."""
    return lam * r_text + (1 - lam) * r_image


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit length: n(x) = x / max(||x||, NORM_EPS).  x: (B, D) -> (B, D)."""
    checks.array("x", x, 2, "(B, D)")
    return _normalize(x)


def cosine_relation(x: torch.Tensor, tau) -> torch.Tensor:
    """The relation matrix S(x)_ij = n(x_i) . n(x_j) / tau (no softmax).  x: (B, D), B >= 2; tau > 0 (a number
    or a 0-d tensor, e.g. a learnable parameter) -> (B, B)."""
    _check_cosine_relation(x, tau)
    return _relation(x, tau)


def offdiag(r: torch.Tensor) -> torch.Tensor:
    """The B (B - 1) off-diagonal entries of a (B, B) matrix, row-major."""
    checks.square("r", r)
    return _offdiag(r)


def fuse_teachers(r_text: torch.Tensor, r_image: torch.Tensor, lam) -> torch.Tensor:
    """The teachers' blended relation E = lam * r_text + (1 - lam) * r_image (lam weights the text teacher and is
    unconstrained, as in the official code)."""
    _check_fuse_teachers(r_text, r_image, lam)
    return _fuse_teachers(r_text, r_image, lam)
