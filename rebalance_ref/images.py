"""Image conversions: uint8 HWC arrays on disk and in containers, float32 CHW in [0, 1] for the models.

`to_model_input` is the one conversion into model input; per-channel normalisation happens inside the image
tower (so the ONNX graph holds it too). Files are read with Pillow; any size and mode becomes RGB uint8,
resized (stretched, as CLIP/ALBEF-style retrieval pipelines do) to a square of the model's resolution.

Reading an image file is guarded: its header's pixel count is checked against `limits.MAX_IMAGE_PIXELS`
before any pixel is decoded, and every problem (unreadable, truncated, too large, unsupported mode) raises
DataError naming the file. `to_rgb8` is the one conversion of a Pillow image of any mode to 8-bit RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rebalance_ref.files import DataError
from rebalance_ref.limits import MAX_IMAGE_PIXELS, MAX_IMAGE_SIZE, bounded_int

# Modes whose samples are wider than 8 bits, with the sample range they nominally span: 16-bit files (PNG, TIFF)
# open as "I;16*" (or as "I" in older Pillow), float TIFFs as "F" with samples conventionally in [0, 1].
_WIDE_MODES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def to_model_input(images_uint8: np.ndarray) -> np.ndarray:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1]: x / 255, channels first."""
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8:
        raise ValueError(f"images_uint8 must have dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"images_uint8 must have shape (B, H, W, 3), got {images.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def _check_size(size: int) -> int:
    return bounded_int(size, "image size", 1, MAX_IMAGE_SIZE)


def to_rgb8(im: Image.Image, source: str = "image") -> np.ndarray:
    """A Pillow image of any mode as uint8 (H, W, 3): the one conversion, so no mode is clipped or misread.

    8-bit modes (1, L, P, PA, LA, RGB, RGBA, CMYK, YCbCr, LAB, HSV, ...) go through Pillow's own conversion;
    alpha is dropped, as CLIP/ALBEF-style pipelines do. Wider samples (16-bit integers, 32-bit integers, floats)
    are scaled, not clipped: the mode's nominal range (0..65535, or 0..1 for floats), widened to cover the
    image's own minimum and maximum when they fall outside it, maps linearly onto 0..255. Non-finite float
    samples and modes Pillow cannot convert raise DataError naming `source`.
    """
    if im.mode in _WIDE_MODES:
        samples = np.asarray(im, dtype=np.float64)
        if not np.isfinite(samples).all():
            raise DataError(f"{source}: mode {im.mode} image holds NaN or infinite samples")
        low = min(0.0, float(samples.min()))
        high = max(_WIDE_MODES[im.mode], float(samples.max()))
        gray = np.rint((samples - low) * (255.0 / (high - low))).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    try:
        rgb = im.convert("RGB")
    except ValueError as exc:
        raise DataError(f"{source}: image mode {im.mode} cannot be converted to RGB ({exc})") from exc
    return np.asarray(rgb, dtype=np.uint8)


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
    """Read an image file of any size and mode (see `to_rgb8`) as RGB uint8 (size, size, 3).

    The header's width x height is checked against MAX_IMAGE_PIXELS before decoding. Raises FileNotFoundError
    for a missing file and DataError (a ValueError) naming the path for an unreadable, truncated or too large one.
    """
    size = _check_size(size)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # Pillow warns from about 89 million pixels; the lower limit below refuses such files anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:  # reads the header only
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise DataError(f"{path}: image header claims {width} x {height} pixels, more than the limit "
                                    f"of {MAX_IMAGE_PIXELS:,} (refused before decoding)")
                im.load()
                image = to_rgb8(im, source=str(path))
    except Image.DecompressionBombError as exc:  # Pillow's own guard, from about 179 million pixels, fires first
        raise DataError(f"{path}: image header claims more pixels than the limit of {MAX_IMAGE_PIXELS:,} "
                        f"(refused before decoding; Pillow: {exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot read image: {exc}") from exc
    return resize_to(image, size)
