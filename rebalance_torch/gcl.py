"""GCL in PyTorch: the mirror of `rebalance_ref.gcl` (same names, arguments and checks; the formulas and the
backward are documented there and in docs/gcl.md). Autograd supplies the gradients.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()`."""

from __future__ import annotations

import torch

from rebalance_ref import checks
from rebalance_ref.gcl import GCL_PAIRS, MODALITIES, _check_gcl
from rebalance_torch import input_checks
from rebalance_torch.relations import _normalize

__all__ = ["fuse", "gcl"]


def _fuse(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """e = n(image + text).  (B, D), (B, D) -> (B, D)."""
    return _normalize(image + text)


def fuse(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The fused embedding of a pair: e = n(f_I + f_T) from the raw projections.  (B, D), (B, D) -> (B, D)."""
    checks.array("image", image, 2, "(B, D)")
    checks.array("text", text, 2, "(B, D)")
    checks.same_shape("image", image, "text", text)
    return _fuse(image, text)


def _masked_soft_cross_entropy(s: torch.Tensor, y: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_j y_ij log softmax_j(s_i) with the masked keys out of every denominator.  (B, C) -> 0-d."""
    log_p = torch.log_softmax(s.masked_fill(~keep, float("-inf")), dim=1)
    return -torch.where(keep, y * log_p, torch.zeros_like(log_p)).sum() / s.shape[0]


def gcl(image: torch.Tensor, text: torch.Tensor, tau, idx=None, pairs="all") -> torch.Tensor:
    """The all-modality contrastive loss over 3B keys [n(image); n(text); n(image + text)], each anchor's own
    modality rows of its image masked; the mean over the (anchor, positive) modality pairs of `pairs` ("all" or
    "cross").  image, text: (B, D) raw projections; idx: (B,) image ids or None."""
    if input_checks.enabled():
        _check_gcl(image, text, tau, idx, pairs)
    batch = image.shape[0]
    blocks = {"i": _normalize(image), "t": _normalize(text), "it": _fuse(image, text)}
    keys = torch.cat([blocks[m] for m in MODALITIES])  # (3B, D)
    if idx is None:
        same = torch.eye(batch, dtype=torch.bool, device=image.device)
    else:
        ids = torch.as_tensor(idx, device=image.device)
        same = ids[:, None] == ids[None, :]
    same64 = same.to(torch.float64)
    y_block = (same64 / same64.sum(dim=1, keepdim=True)).to(image.dtype)  # (B, B)
    chosen = GCL_PAIRS[pairs]
    total = image.new_zeros(())
    for a_pos, a in enumerate(MODALITIES):
        positives = [b for (anchor, b) in chosen if anchor == a]
        if not positives:
            continue
        s = blocks[a] @ keys.T / tau  # (B, 3B)
        keep = torch.ones(batch, 3, batch, dtype=torch.bool, device=image.device)
        keep[:, a_pos] = ~same
        y = torch.zeros(batch, 3, batch, dtype=image.dtype, device=image.device)
        for b in positives:
            y[:, MODALITIES.index(b)] = y_block
        total = total + _masked_soft_cross_entropy(s, y.reshape(batch, -1), keep.reshape(batch, -1))
    return total / len(chosen)
