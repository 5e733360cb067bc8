"""Single-modality pre-training of the student's image tower, before stage 1.

The official student does not start from random weights: its stage 1 fine-tunes an ImageNet-22k Swin-B and a
bert-base on the retrieval data (only the cross-attention layers start random). Our student's image tower starts
the same way, from a network trained on images alone, before it ever sees a caption:

- "supervised" (default): the scenes' attribute labels, exactly the supervised image teacher's task
  (`rebalance_torch.teachers.fit_image_network`: group-weighted binary cross-entropy on
  `rebalance_ref.shapes.attribute_targets`). Like the teacher it stands in for ImageNet-style labels, and like the
  teacher's the labels are privileged: synthetic data only, seen before stage 1 and never by stage 1 or 2.
- "ssl": SimCLR between two augmented views (the ssl image teacher's task), for data without attributes; on the
  shapes world it measured worse than "none" (docs/models.md).
- "none": the tower starts from its random initialisation (the earlier behaviour).

The tower trains with a head on its pooled token h_v (the vector stage 1 projects to v): Linear(W_v, K) to the
attribute logits, or a projection MLP for SimCLR. The head is discarded; every tower weight stays trainable in
stage 1. The text tower and the fusion start random, as before (a BERT-style pre-training of the text tower is not
written). Under torchrun every process pre-trains its own copy: the same seed and data give the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from rebalance_ref.dataset import CaptionedImages
from rebalance_torch.config import TrainConfig
from rebalance_torch.models import Student
from rebalance_torch.moe import moe_layers
from rebalance_torch.teachers import fit_image_network

# Peak learning rate of the pre-training (warm-up over 10 % of its steps, then cosine decay to 0), chosen on
# validation (docs/models.md).
PRETRAIN_LR = 2e-3


class TowerWithHead(nn.Module):
    """images (B, 3, S, S) -> head(h_v) (B, out_dim): the student's image tower and a training-only head on its
    pooled token (a Linear for attribute logits, a projection MLP for SimCLR)."""

    def __init__(self, encoder: nn.Module, width: int, out_dim: int, kind: str):
        super().__init__()
        self.encoder = encoder
        self.head = (nn.Linear(width, out_dim) if kind == "supervised" else
                     nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, out_dim)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(images)[:, 0])   # (B, out_dim) from h_v (B, W_v)
        for layer in moe_layers(self.encoder):   # a mixture-of-experts tower: its routing auxiliaries belong to
            layer.records.clear()                 # stage 1's objective, not to the pre-training; nothing piles up
        return out


def pretrain_image_tower(student: Student, train: CaptionedImages, config: TrainConfig,
                         log: Callable[[str], None] | None = None) -> dict:
    """Pre-train `student.image_encoder` in place on the images of `train` as `config.image_pretrain` says
    ("supervised", "ssl"; "none" does nothing and returns {}), `config.image_pretrain_epochs` passes. Returns the
    training record (kind, epochs, steps, loss per epoch, seconds). Deterministic given `config.seed`; the global
    RNG is left as it was."""
    kind = config.image_pretrain
    if kind == "none":
        return {}
    width = student.config.vision_width
    with torch.random.fork_rng(devices=[]):
        _, fit = fit_image_network(lambda out_dim: TowerWithHead(student.image_encoder, width, out_dim, kind),
                                   train, kind, config.seed + 3, config.image_pretrain_epochs, config.device, log,
                                   f"image tower pre-training ({kind})", lr=PRETRAIN_LR, freeze=False,
                                   hint="--image-pretrain none or ssl, or image_pretrain='none' in a config")
    return {"kind": kind, "epochs": config.image_pretrain_epochs, "lr": PRETRAIN_LR, **fit}
