"""The method's losses in PyTorch: the mirror of `rebalance_ref.losses` (same names, arguments and checks; the
formulas and their derivations are documented there and in docs/formulas.md). Each returns a 0-d tensor, or a
dict of them, and autograd supplies the gradients.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()` (the
trainer's hot path, where `idx` and `labels` must then be tensors on the inputs' device). Labels are built on the
inputs' device, so an unchecked call never reads a tensor back to the host."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rebalance_ref.losses import _check_itm, _check_pair_contrast, _check_structure
from rebalance_torch import input_checks
from rebalance_torch.distances import _FORMS as _DISTANCE_FORMS
from rebalance_torch.relations import _fuse_teachers, _offdiag, _relation, _scaled_cosine

__all__ = ["itc", "single_contrast", "itm", "structure_terms", "structure_distill"]


def _soft_labels(idx, like: torch.Tensor) -> torch.Tensor:
    """y_ij = [idx_i == idx_j] / #{k : idx_k == idx_i} on the dtype and device of `like`; idx None means every
    row is its own image (y = I).  idx: (B,) -> y: (B, B). Divided in float64 and then rounded, as the reference."""
    if idx is None:
        return torch.eye(like.shape[0], dtype=like.dtype, device=like.device)
    ids = torch.as_tensor(idx, device=like.device)
    same = (ids[:, None] == ids[None, :]).to(torch.float64)
    return (same / same.sum(dim=1, keepdim=True)).to(like.dtype)


def _soft_cross_entropy(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """-mean_i sum_j y_ij log softmax_j(s_i).  s, y: (B, C) -> 0-d."""
    return -(y * torch.log_softmax(s, dim=1)).sum() / s.shape[0]


def itc(v: torch.Tensor, t: torch.Tensor, tau, idx=None) -> torch.Tensor:
    """Symmetric image-text contrastive loss with soft labels: s = n(v) n(t)^T / tau,
    loss = (CE_rows(s, y) + CE_rows(s^T, y^T)) / 2.  v, t: (B, D); idx: (B,) image ids or None."""
    if input_checks.enabled():
        _check_pair_contrast("v", v, "t", t, tau, idx)
    y = _soft_labels(idx, v)
    s = _scaled_cosine(v, t, tau)
    return 0.5 * (_soft_cross_entropy(s, y) + _soft_cross_entropy(s.T, y.T))


def single_contrast(x: torch.Tensor, teacher: torch.Tensor, tau, idx=None) -> torch.Tensor:
    """One-way soft-label InfoNCE from the student embedding x to the projected teacher feature (IIC / TTC):
    s = n(x) n(teacher)^T / tau, loss = CE_rows(s, y).  x, teacher: (B, D); idx: (B,) or None."""
    if input_checks.enabled():
        _check_pair_contrast("x", x, "teacher", teacher, tau, idx)
    return _soft_cross_entropy(_scaled_cosine(x, teacher, tau), _soft_labels(idx, x))


def itm(logits: torch.Tensor, labels) -> torch.Tensor:
    """Image-text matching: 2-way cross-entropy, mean over the N items.  logits: (N, 2), labels: (N,) in {0, 1}."""
    if input_checks.enabled():
        _check_itm(logits, labels)
    lab = torch.as_tensor(labels, device=logits.device).long()
    return _soft_cross_entropy(logits, F.one_hot(lab, 2).to(logits.dtype))


def _structure(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights) -> dict[str, torch.Tensor]:
    """{"kd", "kdi", "kdt"}: the three structure terms over the off-diagonal views (see rebalance_ref.losses)."""
    batch = z.shape[0]
    s_f, s_i, s_t = (_relation(x, tau2) for x in (z, img_teacher, txt_teacher))
    e = _fuse_teachers(s_t, s_i, lam)
    dist = _DISTANCE_FORMS[distance]
    if distance == "wasserstein":
        w_full = torch.ones_like(s_f) if row_weights is None else row_weights
        w = _offdiag(w_full).reshape(batch, batch - 1)  # (B, B-1)

        def view(r):
            return _offdiag(r).reshape(batch, batch - 1) * w

        def distance_of(a, b):
            return dist(a, b, w)
    else:
        view = _offdiag
        distance_of = dist
    u_e = view(e)
    return {"kd": distance_of(view(s_f), u_e), "kdi": distance_of(view(s_i), u_e), "kdt": distance_of(view(s_t), u_e)}


def structure_terms(z, img_teacher, txt_teacher, lam, tau2, distance="mae", row_weights=None):
    """The three structure-distillation terms separately, {"kd": KD, "kdi": KDI, "kdt": KDT} (0-d tensors, each
    differentiable). Arguments as in `structure_distill`."""
    if input_checks.enabled():
        _check_structure(z, img_teacher, txt_teacher, lam, tau2, distance, None, row_weights)
    return _structure(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights)


def structure_distill(z, img_teacher, txt_teacher, lam, tau2, distance="mae", weights=None, row_weights=None):
    """Structure-aware distillation weights["kd"] KD + weights["kdi"] KDI + weights["kdt"] KDT (default all 1);
    see rebalance_ref.losses.structure_distill. lam and tau2 may be learnable 0-d tensors; gradients also reach
    the teacher features and row_weights when they require grad (e.g. the official "wd" MLPs in the trainer)."""
    _, _, w = _check_structure(z, img_teacher, txt_teacher, lam, tau2, distance, weights, row_weights)
    terms = _structure(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights)
    return w["kd"] * terms["kd"] + w["kdi"] * terms["kdi"] + w["kdt"] * terms["kdt"]
