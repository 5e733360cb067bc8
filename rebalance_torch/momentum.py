"""Momentum distillation (ALBEF) in PyTorch: the mirror of `rebalance_ref.momentum` (same names, arguments and
checks; the formulas and their backward are documented there and in docs/momentum.md), and `MomentumDistill`, the
trainer's state of the method: the EMA copy of the student, the feature queues and the α warm-up counter.

Inputs are checked as in the reference unless the caller is inside `rebalance_torch.input_checks.skipped()` (the
trainer's hot path). Nothing here reads a tensor back to the host on an unchecked call."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from rebalance_ref.momentum import _check_momentum_itc, _check_targets
from rebalance_torch import input_checks
from rebalance_torch.losses import _soft_cross_entropy
from rebalance_torch.relations import _scaled_cosine

__all__ = ["momentum_targets", "momentum_itc"]


def _key_soft_labels(idx: torch.Tensor, key_idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """g_ik = [idx_i == key_idx_k] / #{k' : idx_i == key_idx_k'}: (B,), (K,) -> (B, K) on `like`'s dtype/device
    (divided in float64, then rounded, as the reference)."""
    ids = torch.as_tensor(idx, device=like.device)
    key_ids = torch.as_tensor(key_idx, device=like.device)
    same = (ids[:, None] == key_ids[None, :]).to(torch.float64)
    return (same / same.sum(dim=1, keepdim=True)).to(like.dtype)


def momentum_targets(image_keys: torch.Tensor, text_keys: torch.Tensor, tau, alpha, idx, key_idx) -> torch.Tensor:
    """y = alpha softmax(momentum scores) + (1 - alpha) g, both directions: (2, B, K). image_keys, text_keys:
    (K, D), the batch's momentum features first; idx (B,); key_idx (K,). The result is detached (stop-gradient)."""
    if input_checks.enabled():
        _check_targets(image_keys, text_keys, tau, alpha, idx, key_idx)
    with torch.no_grad():
        batch = torch.as_tensor(idx).shape[0]
        g = _key_soft_labels(idx, key_idx, image_keys)  # (B, K)
        alpha = torch.as_tensor(alpha, dtype=image_keys.dtype, device=image_keys.device)
        s_i2t = _scaled_cosine(image_keys[:batch], text_keys, tau)  # (B, K)
        s_t2i = _scaled_cosine(text_keys[:batch], image_keys, tau)  # (B, K)
        return torch.stack([alpha * torch.softmax(s, dim=1) + (1 - alpha) * g for s in (s_i2t, s_t2i)])


def momentum_itc(v: torch.Tensor, t: torch.Tensor, image_keys: torch.Tensor, text_keys: torch.Tensor, tau,
                 targets: torch.Tensor) -> torch.Tensor:
    """(CE_rows(n(v) n(text_keys)^T / tau, y[0]) + CE_rows(n(t) n(image_keys)^T / tau, y[1])) / 2.
    v, t: (B, D); keys (K, D); targets (2, B, K)."""
    if input_checks.enabled():
        _check_momentum_itc(v, t, image_keys, text_keys, tau, targets)
    i2t = _soft_cross_entropy(_scaled_cosine(v, text_keys, tau), targets[0])
    t2i = _soft_cross_entropy(_scaled_cosine(t, image_keys, tau), targets[1])
    return 0.5 * (i2t + t2i)


class MomentumDistill(nn.Module):
    """ALBEF's momentum distillation state, kept in the stage-2 objective so that checkpoints hold it:

    - `model`: an EMA copy of the student (θ_m ← m θ_m + (1 − m) θ before every step's momentum features; only
      its towers and projections are used), frozen to the optimiser;
    - `image_queue`, `text_queue` (Q, D) and `idx_queue` (Q,): the momentum features and image ids of earlier
      batches, newest first (a batch enters at the front, the oldest rows leave at the back: a shift, so no
      pointer has to be read back from the device); unfilled slots hold random unit vectors and id -1;
    - `steps`: the steps taken, for α's linear warm-up α_s = α · min(1, s / warmup_steps).

    All of it is plain tensors in `state_dict()`, so a resumed run continues the EMA and the queues exactly."""

    def __init__(self, student: nn.Module, momentum: float, queue_size: int, alpha: float, warmup_steps: int,
                 seed: int):
        super().__init__()
        self.momentum, self.alpha_max, self.warmup_steps = float(momentum), float(alpha), int(warmup_steps)
        self.model = copy.deepcopy(student).requires_grad_(False)
        dim = student.config.embed_dim
        generator = torch.Generator().manual_seed(seed)
        device = next(student.parameters()).device
        for name in ("image_queue", "text_queue"):
            self.register_buffer(name, F.normalize(torch.randn(queue_size, dim, generator=generator), dim=1)
                                 .to(device))
        self.register_buffer("idx_queue", torch.full((queue_size,), -1, dtype=torch.int64, device=device))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64, device=device))

    def alpha(self) -> torch.Tensor:
        """α of this step (a 0-d tensor: no host read)."""
        if self.warmup_steps == 0:
            return torch.tensor(self.alpha_max, device=self.steps.device)
        return self.alpha_max * (self.steps.double() / self.warmup_steps).clamp(max=1.0)

    @torch.no_grad()
    def update(self, student: nn.Module) -> None:
        """θ_m ← m θ_m + (1 − m) θ over every parameter (the copy's order is the student's)."""
        ema = list(self.model.parameters())
        online = [p.detach() for p in student.parameters()]
        torch._foreach_mul_(ema, self.momentum)
        torch._foreach_add_(ema, online, alpha=1.0 - self.momentum)

    def itc(self, student: nn.Module, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
            v_all: torch.Tensor, t_all: torch.Tensor, idx_all: torch.Tensor, tau: torch.Tensor,
            gather) -> torch.Tensor:
        """ITC with momentum distillation on one batch: EMA update, momentum features of this process's rows
        (gathered over processes like v_all), targets over [batch; queue], the loss, then the enqueue."""
        with torch.no_grad():
            self.update(student)
            v_m = gather(self.model.embed_image(images))  # (B, D)
            t_m = gather(self.model.embed_text(ids, mask))  # (B, D)
            image_keys = torch.cat([v_m, self.image_queue])  # (B + Q, D)
            text_keys = torch.cat([t_m, self.text_queue])
            key_idx = torch.cat([idx_all, self.idx_queue])  # (B + Q,)
            targets = momentum_targets(image_keys, text_keys, tau.detach(), self.alpha(), idx_all, key_idx)
        loss = momentum_itc(v_all, t_all, image_keys, text_keys, tau, targets)
        with torch.no_grad():
            size = self.idx_queue.shape[0]
            if size:
                self.image_queue.copy_(image_keys[:size])  # newest first: the batch, then the queue minus its tail
                self.text_queue.copy_(text_keys[:size])
                self.idx_queue.copy_(key_idx[:size])
            self.steps += 1
        return loss
