"""`CaptionedImages`: the one in-memory container for a split of image–caption data.

Every loader (the shapes world, the Karpathy-style JSON reader) produces one, and every consumer (tokenizer,
teachers, trainer, evaluation) reads one. `pairs()` fixes the order of training rows everywhere: image-major,
each image's captions in order; teacher feature files (`.npy`, one row per caption) follow that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CaptionedImages:
    """A split: N RGB images with their captions, names and (synthetic data only) true attributes."""

    images: np.ndarray  # (N, H, W, 3) uint8
    captions: list[list[str]]  # N lists of captions; 5 per image on val/test
    names: list[str]  # relative image paths (or synthetic ids), one per image
    attributes: list | None = None  # synthetic only: per image, a list of object dicts
    canonical: list[str] | None = None  # synthetic only: the full description of each image

    def __post_init__(self) -> None:
        images = self.images
        if not isinstance(images, np.ndarray):
            raise ValueError(f"images must be a numpy array (N, H, W, 3) uint8, got {type(images).__name__}")
        if images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"images must have shape (N, H, W, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise ValueError(f"images must have dtype uint8, got {images.dtype}")
        n = images.shape[0]
        if not isinstance(self.captions, list) or len(self.captions) != n:
            raise ValueError(f"captions must be a list with one caption list per image ({n}), "
                             f"got {len(self.captions) if isinstance(self.captions, list) else type(self.captions)}")
        for i, caps in enumerate(self.captions):
            if not isinstance(caps, list) or not caps:
                raise ValueError(f"captions[{i}] must be a non-empty list of str, got {caps!r}")
            for j, cap in enumerate(caps):
                if not isinstance(cap, str) or not cap.strip():
                    raise ValueError(f"captions[{i}][{j}] must be a non-empty str, got {cap!r}")
        if not isinstance(self.names, list) or len(self.names) != n:
            raise ValueError(f"names must be a list of {n} str (one per image)")
        for name, label in ((self.attributes, "attributes"), (self.canonical, "canonical")):
            if name is not None and (not isinstance(name, list) or len(name) != n):
                raise ValueError(f"{label} must be None or a list with one entry per image ({n})")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def pairs(self) -> tuple[np.ndarray, list[str]]:
        """Image index per caption row, int64 (M,), and the captions flat, image-major (M = total captions)."""
        counts = [len(caps) for caps in self.captions]
        idx = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        flat = [cap for caps in self.captions for cap in caps]
        return idx, flat

    def subset(self, indices) -> CaptionedImages:
        """The images at `indices` (a sequence of ints), with their captions, names and metadata."""
        indices = [int(i) for i in indices]
        pick = lambda seq: None if seq is None else [seq[i] for i in indices]  # noqa: E731
        return CaptionedImages(images=self.images[indices], captions=pick(self.captions), names=pick(self.names),
                               attributes=pick(self.attributes), canonical=pick(self.canonical))
