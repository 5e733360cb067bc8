"""Size limits, checked before anything of that size is allocated or decoded, by name in one place.

A number read from a file or typed by a user (an image's pixel count in its header, an image side, a vocabulary
length, a token count) decides how much memory a step allocates. Each has a ceiling here, generous for real
retrieval data and far below what would exhaust a machine; a value above it raises DataError naming the source
and the limit instead of an allocation that fails (or succeeds and swaps) much later.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref.files import DataError

# Pixels (width x height) in an image file's header. 64 million is an 8000 x 8000 photo; decoding it as RGBA
# takes 256 MB. Larger headers are refused before decoding (a "decompression bomb" is a small file claiming a
# huge size). Pillow's own guard starts at about 89 million pixels.
MAX_IMAGE_PIXELS = 64_000_000

# Side of the square images a model reads (and a data folder stores). Retrieval models read 224 to 384;
# 1024 keeps a split of 10,000 images at 30 GB, already more than a CPU-first run wants.
MAX_IMAGE_SIZE = 1024

# Tokens in a vocabulary (specials included). Multilingual tokenizers hold about 250,000; the text tower's
# embedding table is this many rows.
MAX_VOCAB_SIZE = 250_000

# Tokens per encoded text, [CLS] included (the text tower's position table has this many rows at most).
MAX_TOKENS = 1024


def bounded_int(value, name: str, low: int, high: int, source: str | None = None) -> int:
    """`value` as an int in [low, high]; DataError otherwise, naming `source` (a file) when given and `name`
    (a field or a flag, as the user wrote it)."""
    where = f"{source}: {name}" if source else name
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"{where} must be a whole number from {low} to {high}, got {value!r}")
    if not low <= value <= high:
        raise DataError(f"{where} must be a whole number from {low} to {high}, got {value}")
    return int(value)
