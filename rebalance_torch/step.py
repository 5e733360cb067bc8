"""One optimisation step, the one function that the trainer (one process or several) and `rebalance bench train`
all call, and the optimiser it updates.

AdamW (β = (0.9, 0.98), eps 1e-8, weight decay except biases and LayerNorms, as the official optimiser); the
learning rate is set per step by the caller (`rebalance_torch.schedule.lr_at`); gradients optionally clipped; τ
(and the teacher terms' own τ', when the objective has one) clamped to `tau_clamp` after the update when set.
The step reads nothing back from the device: its terms stay tensors until the caller turns them into numbers on
a logged step (`rebalance_torch.objective.as_numbers`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rebalance_torch.config import TrainConfig
from rebalance_torch.data import Batch
from rebalance_torch.models import Student
from rebalance_torch.objective import Objective


def make_optimizer(modules: list[nn.Module], config: TrainConfig) -> torch.optim.AdamW:
    """AdamW as the official `create_optimizer`: weight decay on everything but biases and LayerNorm weights."""
    decay, no_decay = [], []
    for module in modules:
        for sub in module.modules():
            for name, param in sub.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                (no_decay if isinstance(sub, nn.LayerNorm) or name == "bias" else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.98),
                             eps=1e-8)


def train_step(step_losses: Callable, optimizer: torch.optim.Optimizer, student: Student, config: TrainConfig,
               batch: Batch, lr: float, image_feats: torch.Tensor | None = None,
               text_feats: torch.Tensor | None = None,
               itm_generator: torch.Generator | None = None, objective: Objective | None = None,
               teacher_phase: tuple[bool, float] = (False, 1.0)) -> dict[str, torch.Tensor]:
    """Forward, backward and update on one batch already on the device; returns the detached terms.

    `step_losses(images, ids, mask, idx, image_feats, text_feats, itm_generator=...)` computes `(loss, terms)`:
    `rebalance_torch.objective.compute_losses` bound to the student, objective, config and stage, or the same
    wrapped by DistributedDataParallel (`DistContext.data_parallel`). `objective`: the stage-2 objective whose τ'
    is clamped with τ; `teacher_phase`: this step's (detached, weight factor) of the teacher terms
    (`rebalance_torch.schedule.teacher_phase`), passed on to `step_losses` in stage 2."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    extra = {"teacher_phase": teacher_phase} if teacher_phase != (False, 1.0) else {}
    loss, terms = step_losses(batch.images, batch.ids, batch.mask, batch.image_idx, image_feats, text_feats,
                              itm_generator=itm_generator, **extra)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip)
    optimizer.step()
    if config.tau_clamp is not None:
        with torch.no_grad():
            student.temp.clamp_(*config.tau_clamp)
    if objective is not None:
        objective.clamp_(config.tau_clamp)
    return terms
