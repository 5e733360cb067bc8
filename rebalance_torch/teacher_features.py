"""Teacher features on disk: the frozen features a run distils from, read from a folder of `.npy` arrays.

A folder holds `train_image.npy` and `train_text.npy` (one row per training caption, `CaptionedImages.pairs()`
order; the official names `train_{image,text}_embed_regu.npy` are read too, so features computed elsewhere, e.g.
by real pretrained models, can be supplied), optionally `val_image.npy` (one row per validation image) and
`val_text.npy` (one row per validation caption) for the teacher check, and `report.json` (the teachers' quality).
`rebalance teachers` and the trainer's teacher cache write exactly this layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rebalance_ref.features import check_teacher_features
from rebalance_ref.files import read_json

# Our file names, one per array a teacher run writes (`<key>.npy`).
FEATURE_FILES = ("train_image", "train_text", "val_image", "val_text", "test_image", "test_text")
# The official code's names of the training arrays, accepted as well.
OFFICIAL_FILES = {"train_image": "train_image_embed_regu.npy", "train_text": "train_text_embed_regu.npy"}
REPORT_FILE = "report.json"


@dataclass
class TeacherFeatures:
    """Frozen teacher features: one row per training caption row (`pairs()` order), plus validation features
    (val images / val captions) for the teacher-vs-student check when available."""

    train_image: np.ndarray
    train_text: np.ndarray
    val_image: np.ndarray | None = None
    val_text: np.ndarray | None = None
    report: dict = field(default_factory=dict)


def find_feature_file(folder: str | Path, key: str) -> Path | None:
    """The file holding array `key` in `folder` (our name first, then the official one), or None."""
    for name in (f"{key}.npy", OFFICIAL_FILES.get(key)):
        if name is not None and (Path(folder) / name).is_file():
            return Path(folder) / name
    return None


def load_teacher_features(path: str | Path | np.ndarray, n_rows: int) -> np.ndarray:
    """Teacher features supplied by a user (`.npy`, the official format): float32 (n_rows, d), checked.

    `n_rows` is what the data needs: the number of training captions (`len(data.pairs()[1])`) for train features,
    or the number of images / captions of a split. Raises ValueError naming the file for a missing or unreadable
    file, a shape other than (n_rows, d), a non-numeric dtype, NaN / inf values, or rows that cannot carry cosine
    relations (`rebalance_ref.features.check_teacher_features`: all zero, overflowing or underflowing float32).
    """
    if isinstance(path, np.ndarray):
        array, where = path, "teacher features"
    else:
        where = f"teacher features {path}"
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{where}: no such file")
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError(f"{where}: not a readable .npy array ({exc})") from exc
    if isinstance(n_rows, bool) or not isinstance(n_rows, int | np.integer) or n_rows < 1:
        raise ValueError(f"n_rows must be an int >= 1, got {n_rows!r}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"{where}: dtype must be a real number type, got {array.dtype}")
    if array.ndim != 2 or array.shape[0] != n_rows or array.shape[1] < 1:
        raise ValueError(f"{where}: shape must be ({n_rows}, d) -- one row per training caption in "
                         f"CaptionedImages.pairs() order (or per image/caption of an eval split) -- got {array.shape}")
    array = array.astype(np.float32)
    bad = ~np.isfinite(array)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise ValueError(f"{where}: {int(bad.sum())} NaN/inf values (first in row {row})")
    check_teacher_features(array, where)  # rows that can carry cosine relations: not zero, not over/underflowing
    return array


def load_teacher_dir(folder: str | Path, n_rows: int, n_val_images: int, n_val_rows: int) -> TeacherFeatures:
    """Teacher features from a folder (the layout above): the training arrays must be there, with `n_rows` rows
    each; the validation arrays are read when present."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"teacher_dir: no such folder {folder}")
    arrays = {}
    for key, rows in (("train_image", n_rows), ("train_text", n_rows), ("val_image", n_val_images),
                      ("val_text", n_val_rows)):
        path = find_feature_file(folder, key)
        if path is None and key.startswith("train"):
            raise ValueError(f"teacher_dir {folder}: missing {key}.npy or {OFFICIAL_FILES[key]}")
        arrays[key] = None if path is None else load_teacher_features(path, rows)
    report = read_json(folder / REPORT_FILE, missing=ValueError) if (folder / REPORT_FILE).is_file() else {}
    return TeacherFeatures(**arrays, report=report)
