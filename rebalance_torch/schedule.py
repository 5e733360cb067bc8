"""What a training step's number decides: its learning rate, its random seed and its batch rows.

Every one is a pure function of (seed, stage, step), so a run resumed from a checkpoint replays exactly what an
uninterrupted run would have done, on any number of processes.
"""

from __future__ import annotations

import numpy as np
import torch


def lr_at(step: int, total: int, warmup: float, peak: float) -> float:
    """Linear warm-up over the first `warmup`·total steps, then linear decay to 0 at `total`."""
    warm = max(1, int(round(warmup * total))) if warmup > 0 else 0
    if step < warm:
        return peak * (step + 1) / warm
    return peak * max(0.0, (total - step) / max(1, total - warm))


def step_seed(*parts: int) -> int:
    """A 63-bit seed from integer parts, e.g. (seed, stage, step): independent streams for distinct parts."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_rows(seed: int, stage: int, step: int, n_rows: int, batch_size: int) -> torch.Tensor:
    """The caption rows of `step`: epoch e = step // (n_rows // B) walks a permutation seeded by (seed, stage, e)."""
    per_epoch = max(1, n_rows // batch_size)
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(n_rows, generator=torch.Generator().manual_seed(step_seed(seed, stage, epoch, 7)))
    return order[position * batch_size:(position + 1) * batch_size]


def teacher_phase(step: int, total: int, warmup: float, ramp: float) -> tuple[bool, float]:
    """Stage 2's teacher terms at `step` of `total`: (is the student detached in them, the factor on their
    weights). The first round(`warmup`·total) steps train only the teacher terms' own parameters (W_sv, W_st, λ,
    τ2, τ'), at full weight; over the next round(`ramp`·total) steps the factor rises linearly to 1 (1/R at the
    ramp's first step, 1 at its last); then (False, 1.0), the official objective."""
    warm = int(round(warmup * total))
    if step < warm:
        return True, 1.0
    ramp_steps = int(round(ramp * total))
    if step < warm + ramp_steps:
        return False, (step - warm + 1) / ramp_steps
    return False, 1.0
