"""Files written whole or not at all, and JSON read with errors that name the file.

Every writer in rebalance (tokenizer, data folders, teacher features, checkpoints, bundles) goes through
`atomic_path`: the content is written to a temporary file beside the target, flushed to disk, and only then moved
onto the target with `os.replace`, which is atomic on one file system. A run killed mid-write leaves the previous
file intact, and a reader never sees half a file. NumPy only, so the torch-free retriever uses it too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; write it inside the block. On success the file is fsynced and moved
    onto `path`; on any failure it is removed and `path` keeps its previous content (or stays absent)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # ends in ".tmp": bundle hashing skips such files
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, data, indent: int | None = 1, sort_keys: bool = False) -> None:
    """Write `data` as JSON to `path` atomically."""
    write_text_atomic(path, json.dumps(data, indent=indent, sort_keys=sort_keys))


def save_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write `array` in NumPy's .npy format to `path` atomically (the name is kept as given)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def read_json(path: str | Path, error: type[Exception] = ValueError,
              missing: type[Exception] = FileNotFoundError):
    """The JSON content of `path`. A missing file raises `missing`, malformed JSON or non-UTF-8 text raises `error`;
    each message names the file (and, for JSON, the line and column)."""
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text: {exc}") from exc
