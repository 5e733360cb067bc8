"""Image conversions: uint8 HWC arrays on disk and in containers, float32 CHW in [0, 1] for the models.

`to_model_input` is the one conversion into model input; per-channel normalisation happens inside the image
tower (so the ONNX graph holds it too). Files are read with Pillow; any size and mode becomes RGB uint8,
resized (stretched, as CLIP/ALBEF-style retrieval pipelines do) to a square of the model's resolution.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


def to_model_input(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]: x / 255, channels first."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"images_uint8 must have dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images_uint8 must have shape (B, H, W, 3), got {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


def resize_to(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (size, size, 3); bicubic, aspect ratio not kept; unchanged if already that size."""
    size = _check_size(size)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[0] == size and image.shape[1] == size:
        return image.copy()
    resized = Image.fromarray(image, mode="RGB").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(resized, dtype=np.uint8)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """Read an image file of any size and mode (L, P, RGBA, CMYK, ...) as RGB uint8 (size, size, 3).

    Raises FileNotFoundError for a missing file and ValueError naming the path for an unreadable one.
    """
    size = _check_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    return resize_to(np.asarray(rgb, dtype=np.uint8), size)
