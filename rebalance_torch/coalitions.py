"""A student's score of one image-caption pair with only a coalition of its words and image patches present: the
value function of the interaction probe (`rebalance_ref.interactions` estimates the Shapley interactions).

Players: the caption's words (token positions 1..L-1; [CLS] at 0 is always present), then the P image patches in
row-major order. A coalition is a boolean row (n_words + P,).

How a player is made absent:
- a word: its attention-mask entry is set to 0, so no query attends to it, in the text tower or in the fusion
  encoder; the other words keep their positions. Only [CLS] is read out, so the masked token's own output is
  never used.
- a patch: its token right after the image encoder's convolutional stem (before positions are added and before
  any attention) is replaced by a fill token, by default the mean stem token over the images being probed;
  the position embedding is still added, so the patch is "there but featureless", and the transformer blocks
  let the other patches fill in context as they would.

Rewards: "itm" (the ITM head's matched logit of the fused pair: where words and patches meet, in the fusion's
cross-attention) or "cosine" (the cosine of the projected embeddings v and t: the dual-encoder retrieval score,
where words and patches meet only through one dot product of two pooled vectors).
"""

from __future__ import annotations

import numpy as np
import torch

REWARDS = ("cosine", "itm")


def stem_tokens(student, images: torch.Tensor) -> torch.Tensor:
    """Patch tokens right after the image encoder's stem: images (B, 3, H, W) in [0, 1] -> (B, P, W_v)."""
    enc = student.image_encoder
    x = (images - enc.pixel_mean) / enc.pixel_std
    return enc.stem(x).flatten(2).transpose(1, 2)  # (B, P, W_v), row-major patches


def image_tokens_with_patches(student, images: torch.Tensor, present: torch.Tensor,
                              fill: torch.Tensor) -> torch.Tensor:
    """The image encoder's tokens (B, 1+P, W_v) with absent patches' stem tokens replaced by `fill` (W_v,).

    Follows `ImageEncoder.forward` step by step (stem, positions, blocks, LayerNorm, the mean token prepended);
    `tests/rebalance_torch/test_coalitions.py` holds the two equal when every patch is present.
    present: (B, P) bool."""
    enc = student.image_encoder
    x = torch.where(present[..., None], stem_tokens(student, images), fill) + enc.pos  # (B, P, W_v)
    for block in enc.blocks:
        x = block(x)
    x = enc.norm(x)
    return torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)  # (B, 1+P, W_v)


class PairGame:
    """v(coalition) for one image (3, H, W) and one caption (ids, mask (L,) int64, [CLS] first, no padding needed).

    Call with coalitions (B, n_words + P) bool -> (B,) float64 rewards. `n_players`, `n_words`, `n_patches` name
    the layout; `fill` (W_v,) is the absent patches' token."""

    def __init__(self, student, image: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, fill: torch.Tensor,
                 reward: str = "cosine"):
        if reward not in REWARDS:
            raise ValueError(f"reward: expected one of {', '.join(REWARDS)}, got {reward!r}")
        length = int(mask.sum())
        if length < 2:
            raise ValueError("caption: expected at least one word after [CLS]")
        self.student, self.reward, self.fill = student, reward, fill
        self.image, self.ids = image, ids[:length]
        self.n_words = length - 1
        self.n_patches = student.config.num_patches
        self.n_players = self.n_words + self.n_patches

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        present = torch.as_tensor(np.asarray(coalitions, dtype=bool))
        if present.ndim != 2 or present.shape[1] != self.n_players:
            raise ValueError(f"coalitions: expected shape (B, {self.n_players}), got {tuple(present.shape)}")
        b = present.shape[0]
        words, patches = present[:, :self.n_words], present[:, self.n_words:]
        mask = torch.cat([torch.ones(b, 1, dtype=torch.int64), words.to(torch.int64)], dim=1)  # (B, L)
        ids = self.ids[None].expand(b, -1)
        with torch.no_grad():
            image_tokens = image_tokens_with_patches(self.student, self.image[None].expand(b, -1, -1, -1), patches,
                                                     self.fill)
            text_tokens = self.student.encode_text(ids, mask)[0]
            if self.reward == "itm":
                out = self.student.itm_logits(text_tokens, mask, image_tokens)[:, 1]
            else:
                v = self.student.project_image(image_tokens[:, 0])
                t = self.student.project_text(text_tokens[:, 0])
                out = (v * t).sum(dim=1)
        return out.double().numpy()
