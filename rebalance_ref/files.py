"""Files written whole or not at all, files read with errors that name the file, and paths kept inside a folder.

Every writer in rebalance (tokenizer, data folders, teacher features, checkpoints, bundles) goes through
`atomic_path`: the content is written to a temporary file beside the target, flushed to disk, and only then moved
onto the target with `os.replace`, which is atomic on one file system. A run killed mid-write leaves the previous
file intact, and a reader never sees half a file. NumPy only, so the torch-free retriever uses it too.

`DataError` is the one error for bad data on disk: a user's mistake or a malformed file, never a bug. It is a
ValueError whose one-line message names the file, the field and what was expected, so a command line can print
it as it is. `path_inside` keeps every path a file names (an image root, an image, a split's JSON) inside the folder
that holds it, after resolving symlinks. `read_jsonl` reads an append-only log whose last line a killed writer
may have left half written.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Bad data on disk or a bad value from a user; the one-line message names the file (and row or field) at
    fault and what was expected."""


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


def read_json(path: str | Path, error: type[Exception] = DataError,
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


def read_jsonl(path: str | Path, missing: type[Exception] = FileNotFoundError) -> list[dict]:
    """The rows (JSON objects, one per line) of a JSON-lines file such as a run's append-only metrics log.

    A last line without its newline that is not a complete JSON object is what a writer killed mid-append leaves:
    it is dropped with a warning naming the file. Any other malformed line raises DataError naming the file and
    the line; blank lines are skipped. To append after a torn line, rewrite the file from the rows returned
    (`write_text_atomic`), or the next row would be glued to the fragment.
    """
    path = Path(path)
    if not path.is_file():
        raise missing(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    lines = text.split("\n")  # the last item is "" when the file ends with a newline, else an unfinished line
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        torn = number == len(lines)
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if torn:
                warnings.warn(f"{path}: dropped the unfinished last line {number} ({len(line)} characters; "
                              f"a writer stopped mid-line)", stacklevel=2)
                break
            raise DataError(f"{path} line {number}: malformed JSON at column {exc.colno}: {exc.msg}") from exc
        if not isinstance(row, dict):
            if torn:
                warnings.warn(f"{path}: dropped the unfinished last line {number} (not a JSON object)",
                              stacklevel=2)
                break
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def path_inside(folder: str | Path, name, where: str, what: str = "path") -> Path:
    """The path `name` (relative, as written in a file) names under `folder`, symlinks resolved.

    Raises DataError (message starting with `where`, naming `what`) unless `name` is a non-empty relative path
    whose resolved location lies inside the resolved `folder`: an absolute path, a `..` that climbs out, and a
    symlink pointing outside are all refused, so a file can never make a reader open a file elsewhere on disk.
    """
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"{where}: {what} must be a non-empty relative path (a string), got {name!r}")
    if "\0" in name or os.path.isabs(name) or Path(name).is_absolute():
        raise DataError(f"{where}: {what} {name!r} escapes {folder}: expected a relative path inside it")
    root = Path(folder).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise DataError(f"{where}: {what} {name!r} escapes {folder} (it leads to {target})")
    return target
