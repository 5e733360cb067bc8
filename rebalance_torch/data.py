"""Torch datasets and batching over `CaptionedImages` (the shapes world in memory, or data read from disk).

`PairDataset` yields one item per training caption row, in `CaptionedImages.pairs()` order (image-major), so row r
of a dataset lines up with row r of the teacher feature files. `Collate` stacks items into a `Batch`, pads token
ids to the longest caption of the batch, and applies train-time augmentation. `load_splits` gives a run's
train/val/test splits; `image_batches` and `text_batches` walk a split in order for encoding (evaluation, teacher
features).

Augmentation must not change what a caption says about the image. Positions are attributes here, so there are
no flips and no crops: only Gaussian pixel noise, a brightness factor, and a translation of at most 2 pixels
(edge pixels replicated, never wrapped round). All three are 0 by default: the synthetic fast path trains on the
clean images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.images import to_model_input
from rebalance_ref.karpathy import read_dataset
from rebalance_ref.shapes import make_splits
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.config import TrainConfig

MAX_SHIFT = 2  # pixels; a larger translation could move an object across a grid-cell boundary at 32x32


class Batch(NamedTuple):
    """A training batch; unpacks as (images, ids, mask, image_idx, row_idx)."""

    images: torch.Tensor  # float32 (B, 3, H, W) in [0, 1]
    ids: torch.Tensor  # int64 (B, L), [CLS] at 0, [PAD] = 0
    mask: torch.Tensor  # int64 (B, L), 1 for real tokens
    image_idx: torch.Tensor  # int64 (B,) image index of each row (the soft labels' idx)
    row_idx: torch.Tensor  # int64 (B,) caption row in pairs() order (indexes teacher features)


@dataclass(frozen=True)
class Augment:
    """Train-time augmentation that keeps the semantics of the shapes world; every field at 0 is a no-op.

    noise: sigma of additive Gaussian noise (images in [0, 1]); brightness: each image is scaled by a factor drawn
    uniformly from [1 - brightness, 1 + brightness]; shift: translation by up to this many pixels (<= 2) in x and y.
    """

    noise: float = 0.0
    brightness: float = 0.0
    shift: int = 0

    def __post_init__(self) -> None:
        for name in ("noise", "brightness"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
                raise ValueError(f"Augment.{name} must be a number in [0, 1], got {value!r}")
        if isinstance(self.shift, bool) or not isinstance(self.shift, int) or not 0 <= self.shift <= MAX_SHIFT:
            raise ValueError(f"Augment.shift must be an int in [0, {MAX_SHIFT}] pixels, got {self.shift!r}")

    @property
    def active(self) -> bool:
        return self.noise > 0 or self.brightness > 0 or self.shift > 0

    def to_dict(self) -> dict:
        return asdict(self)


MILD = Augment(noise=0.02, brightness=0.1, shift=1)


def augment_images(images: torch.Tensor, augment: Augment, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augmented copy of float images (B, 3, H, W) in [0, 1]; the result is clamped to [0, 1]."""
    if not augment.active:
        return images
    out = images
    b = images.shape[0]
    if augment.shift > 0:
        s = augment.shift
        # replicate-pad by s, then crop an (H, W) window at a random offset in [0, 2s]: a shift by -s..s pixels
        padded = torch.nn.functional.pad(out, (s, s, s, s), mode="replicate")
        offsets = torch.randint(0, 2 * s + 1, (b, 2), generator=generator)
        h, w = images.shape[2], images.shape[3]
        out = torch.stack([padded[i, :, int(dy):int(dy) + h, int(dx):int(dx) + w]
                           for i, (dy, dx) in enumerate(offsets.tolist())])
    if augment.brightness > 0:
        factor = 1.0 + (torch.rand((b, 1, 1, 1), generator=generator) * 2.0 - 1.0) * augment.brightness
        out = out * factor
    if augment.noise > 0:
        out = out + torch.randn(out.shape, generator=generator) * augment.noise
    return out.clamp(0.0, 1.0)


def images_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]: `rebalance_ref.images.to_model_input` as a tensor."""
    return torch.from_numpy(to_model_input(images_uint8))


class PairDataset(Dataset):
    """One item per caption row of `data.pairs()`: (image (3, H, W) float32, ids (l,), mask (l,), image index,
    row index). Captions are tokenised once up front (each to its own length, at most tokenizer.max_len)."""

    def __init__(self, data: CaptionedImages, tokenizer: Tokenizer):
        if not isinstance(data, CaptionedImages):
            raise ValueError(f"data must be a CaptionedImages, got {type(data).__name__}")
        if not isinstance(tokenizer, Tokenizer):
            raise ValueError(f"tokenizer must be a rebalance_ref.tokenizer.Tokenizer, got {type(tokenizer).__name__}")
        self.data = data
        self.tokenizer = tokenizer
        idx, flat = data.pairs()
        self.image_idx = torch.from_numpy(idx)
        self.images = torch.from_numpy(np.ascontiguousarray(data.images))  # uint8 (N, H, W, 3), shared memory
        self.tokens = []
        for lo in range(0, len(flat), 4096):
            ids, mask = tokenizer.encode(flat[lo:lo + 4096])
            lengths = mask.sum(1)
            self.tokens.extend(torch.from_numpy(ids[i, :lengths[i]].copy()) for i in range(len(ids)))

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, row: int):
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} caption rows")
        row = row % len(self)
        i = int(self.image_idx[row])
        image = self.images[i].permute(2, 0, 1).to(torch.float32) / 255.0
        ids = self.tokens[row]
        return image, ids, torch.ones_like(ids), i, row


class Collate:
    """Stack items into a `Batch`, padding ids/mask with 0 to the longest caption, then augment the images.

    The augmentation draws from `generator` when given (single-process loading); with worker processes pass
    None, and each worker uses its own torch RNG, which DataLoader seeds from its generator.
    """

    def __init__(self, augment: Augment | None = None, generator: torch.Generator | None = None):
        self.augment = augment or Augment()
        self.generator = generator

    def __call__(self, items) -> Batch:
        images, ids, masks, image_idx, row_idx = zip(*items, strict=True)
        length = max(len(x) for x in ids)
        id_batch = torch.zeros((len(ids), length), dtype=torch.int64)
        mask_batch = torch.zeros((len(ids), length), dtype=torch.int64)
        for i, (x, m) in enumerate(zip(ids, masks, strict=True)):
            id_batch[i, :len(x)] = x
            mask_batch[i, :len(m)] = m
        image_batch = augment_images(torch.stack(images), self.augment, self.generator)
        return Batch(image_batch, id_batch, mask_batch, torch.tensor(image_idx, dtype=torch.int64),
                     torch.tensor(row_idx, dtype=torch.int64))


def image_batches(data: CaptionedImages, batch_size: int = 256):
    """Float images (b, 3, H, W) of every image in order, `batch_size` at a time (for evaluation/encoding)."""
    for lo in range(0, len(data), batch_size):
        yield images_to_tensor(data.images[lo:lo + batch_size])


def text_batches(texts: list[str], tokenizer: Tokenizer, batch_size: int = 256):
    """(ids, mask) int64 tensors for `texts` in order, `batch_size` at a time, each padded to its longest."""
    for lo in range(0, len(texts), batch_size):
        ids, mask = tokenizer.encode(texts[lo:lo + batch_size])
        yield torch.from_numpy(ids), torch.from_numpy(mask)


def load_splits(config: TrainConfig) -> dict[str, CaptionedImages]:
    """The run's train/val/test splits: the shapes world from the preset and seed, or a data folder."""
    if config.data_dir is not None:
        splits = read_dataset(config.data_dir, config.image_size)
    else:
        splits = make_splits(config.preset, config.n_train, config.n_val, config.n_test, seed=config.seed,
                             size=config.image_size)
    missing = [s for s in ("train", "val", "test") if s not in splits]
    if missing:
        raise ValueError(f"data: the run needs train, val and test splits; missing {', '.join(missing)}")
    return splits
