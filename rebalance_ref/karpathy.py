"""Image–caption data on disk in the Karpathy-style format that Flickr30K / COCO retrieval code uses.

A data folder (what `rebalance data make` writes, and what `read_dataset` reads) holds:

    images/<name>            PNG files; <name> is the relative path stored in the JSON rows
    train.json               one row per caption: {"image": <name>, "caption": <str>, "image_id": <int>}
    val.json, test.json      one row per image:   {"image": <name>, "caption": [<str>, ...]}
    metadata.json            {"format": "rebalance-data", "version": 1, "image_root": "images", "splits": {...},
                              plus, for synthetic data, per split and image the true attributes and canonical
                              description, and the generator's settings (preset, knobs, seed, size)}

`read_split` reads one JSON file plus an image root from anywhere (e.g. a Flickr30K download). Both row formats
are accepted in any split; rows are grouped into images by `image_id` when every row has one, else by `image`,
in first-seen order, each image's captions in row order.

Every problem raises `DataError` (a ValueError) naming the file and the row or field: malformed JSON, a field
of the wrong type, a row without an image or caption, an empty caption, a missing or unreadable image, an image
size outside 1..`limits.MAX_IMAGE_SIZE` (checked before the split's array is allocated), and too few captions.
Every path a data folder names stays inside it: the image root and each split's JSON inside the data folder,
each image inside the image root, after resolving symlinks (`files.path_inside`); an absolute path, a `..`
that climbs out or a symlink that points out is refused, so a data folder cannot make the reader open any
other file on disk. Images kept elsewhere (a symlinked `images/` included) are read by passing their folder
explicitly, as the caller's own choice: `read_dataset(..., image_root=...)` or `read_split`.

Too few captions on val/test is an error by default (`on_short="error"`): the evaluation assumes exactly
`expect_captions` per image, and silently dropping images would change the test set and make figures incomparable.
`on_short="skip"` drops such images with a warning naming them. Extra captions beyond `expect_captions` are cut,
as the official code does for COCO's few 6-caption images (a warning counts them).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.files import DataError, atomic_path, path_inside, read_json, write_json_atomic
from rebalance_ref.images import load_image
from rebalance_ref.limits import MAX_IMAGE_SIZE, bounded_int

FORMAT = "rebalance-data"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
IMAGE_ROOT = "images"


__all__ = ["DataError", "read_dataset", "read_metadata", "read_split", "write_dataset"]  # DataError: files.py


def _load_json(path: Path):
    return read_json(path, error=DataError, missing=DataError)


def _image_size(value, where: str) -> int:
    return bounded_int(value, where, 1, MAX_IMAGE_SIZE)


def _captions_of(row: dict, where: str) -> list[str]:
    if "caption" not in row:
        raise DataError(f"{where}: missing 'caption'")
    caps = row["caption"]
    caps = [caps] if isinstance(caps, str) else caps
    if not isinstance(caps, list) or not caps:
        raise DataError(f"{where}: 'caption' must be a str or a non-empty list of str, got {row['caption']!r}")
    for j, cap in enumerate(caps):
        if not isinstance(cap, str):
            raise DataError(f"{where}: caption {j} must be a str, got {cap!r}")
        if not cap.strip():
            raise DataError(f"{where}: caption {j} is empty")
    return caps


def read_split(json_path: str | Path, image_root: str | Path, split: str, image_size: int,
               expect_captions: int | None = 5, on_short: str = "error") -> CaptionedImages:
    """Read a Karpathy-style JSON file and its images (any size and mode, resized to `image_size`).

    `expect_captions` applies to val/test (None: no check); training images may have any number >= 1.
    `on_short`: "error" (default) or "skip" (drop the image, warn). Raises DataError naming file and row.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if on_short not in ("error", "skip"):
        raise ValueError(f"on_short must be 'error' or 'skip', got {on_short!r}")
    if expect_captions is not None and (not isinstance(expect_captions, int) or expect_captions < 1):
        raise ValueError(f"expect_captions must be None or an int >= 1, got {expect_captions!r}")
    image_size = _image_size(image_size, "image size")
    if not image_root.is_dir():
        raise DataError(f"image root {image_root} is not a directory")
    rows = _load_json(json_path)
    if not isinstance(rows, list) or not rows:
        raise DataError(f"{json_path}: expected a non-empty JSON list of rows, got {type(rows).__name__}")
    by_id = all(isinstance(r, dict) and "image_id" in r for r in rows)
    groups: dict = {}  # key -> [name, captions, first row]; dicts keep first-seen order
    for k, row in enumerate(rows):
        where = f"{json_path} row {k}"
        if not isinstance(row, dict) or "image" not in row:
            raise DataError(f"{where}: expected an object with 'image' and 'caption', got {row!r:.80}")
        caps = _captions_of(row, where)
        key = row["image_id"] if by_id else row["image"]
        if isinstance(key, list | dict):
            raise DataError(f"{where}: 'image_id' must be a str or int, got {key!r}")
        if key in groups:
            if groups[key][0] != row["image"]:
                raise DataError(f"{where}: image_id {key!r} was {groups[key][0]!r} in row {groups[key][2]}, "
                                f"now {row['image']!r}")
            groups[key][1].extend(caps)
        else:
            groups[key] = [row["image"], list(caps), k]
    names, captions, first_rows, short = [], [], [], []
    n_cut = 0
    for name, caps, k in groups.values():
        if expect_captions is not None and split != "train":
            if len(caps) < expect_captions:
                message = (f"{json_path} row {k}: image {name!r} has {len(caps)} captions, "
                           f"expected {expect_captions}")
                if on_short == "error":
                    raise DataError(message + " (complete the captions, or read with short images skipped)")
                short.append(message)
                continue
            n_cut += len(caps) > expect_captions
            caps = caps[:expect_captions]
        names.append(name)
        captions.append(caps)
        first_rows.append(k)
    if short:
        warnings.warn(f"dropped {len(short)} image(s) with too few captions; first: {short[0]}", stacklevel=2)
    if n_cut:
        warnings.warn(f"{json_path}: kept the first {expect_captions} captions of {n_cut} image(s) with more",
                      stacklevel=2)
    if not names:
        raise DataError(f"{json_path}: no image left to read")
    images = np.empty((len(names), image_size, image_size, 3), dtype=np.uint8)
    for i, (name, k) in enumerate(zip(names, first_rows, strict=True)):
        where = f"{json_path} row {k}"
        path = path_inside(image_root, name, where, "image path")
        try:
            images[i] = load_image(path, image_size)
        except FileNotFoundError as exc:
            raise DataError(f"{where}: image file not found: {path}") from exc
        except ValueError as exc:  # load_image's message starts with the path
            raise DataError(f"{where}: {exc}") from exc
    return CaptionedImages(images=images, captions=captions, names=names)


def _write_json(path: Path, data) -> None:
    write_json_atomic(path, data, indent=1)


def write_dataset(out_dir: str | Path, splits: dict[str, CaptionedImages], extra: dict | None = None) -> Path:
    """Write splits as PNGs under `out_dir/images/` plus `<split>.json` and `metadata.json`; returns out_dir.

    `extra` (JSON-serialisable) is stored in the metadata, e.g. the generator's preset, knobs and seed.
    """
    out_dir = Path(out_dir)
    if not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits must be a non-empty dict with keys among {SPLITS}, got {sorted(splits)}")
    root = out_dir / IMAGE_ROOT
    root.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "version": FORMAT_VERSION, "image_root": IMAGE_ROOT, "splits": {},
                **(extra or {})}
    for split, data in splits.items():
        if not isinstance(data, CaptionedImages):
            raise ValueError(f"splits[{split!r}] must be a CaptionedImages, got {type(data).__name__}")
        for i, name in enumerate(data.names):
            path = path_inside(root, name, f"splits[{split!r}].names[{i}]", "image path")
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                Image.fromarray(data.images[i], mode="RGB").save(tmp, format="PNG")
        if split == "train":
            rows = [{"image": name, "caption": cap, "image_id": i}
                    for i, (name, caps) in enumerate(zip(data.names, data.captions, strict=True)) for cap in caps]
        else:
            rows = [{"image": name, "caption": list(caps)} for name, caps in zip(data.names, data.captions,
                                                                                    strict=True)]
        _write_json(out_dir / f"{split}.json", rows)
        entry = {"json": f"{split}.json", "n_images": len(data), "n_captions": sum(map(len, data.captions)),
                 "image_size": list(data.image_size)}
        if data.attributes is not None or data.canonical is not None:
            entry["scenes"] = [{"image": name,
                                "attributes": None if data.attributes is None else data.attributes[i],
                                "canonical": None if data.canonical is None else data.canonical[i]}
                               for i, name in enumerate(data.names)]
        metadata["splits"][split] = entry
    _write_json(out_dir / "metadata.json", metadata)
    return out_dir


def read_metadata(data_dir: str | Path) -> dict:
    """The metadata of a data folder written by `write_dataset`, its structure checked: DataError naming the
    field if absent, of another format, or with a field of the wrong type or out of range."""
    path = Path(data_dir) / "metadata.json"
    meta = _load_json(path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: not a rebalance data folder's metadata (expected format {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise DataError(f"{path}: data format version {meta.get('version')!r}, this rebalance reads "
                        f"{FORMAT_VERSION}")
    _check_entries(meta, path)
    return meta


def _check_entries(meta: dict, path: Path) -> None:
    """Raise DataError naming the field unless every field the reader uses has the type it expects."""
    root = meta.get("image_root", IMAGE_ROOT)
    if not isinstance(root, str):
        raise DataError(f"{path}: 'image_root' must be a relative folder path (a string), got {root!r:.60}")
    if not isinstance(meta.get("splits"), dict):
        raise DataError(f"{path}: 'splits' must be an object with keys among {list(SPLITS)}")
    for split, entry in meta["splits"].items():
        field = f"{path}: splits.{split}"
        if not isinstance(entry, dict):
            raise DataError(f"{field} must be an object with a 'json' file name, got {entry!r:.60}")
        if not isinstance(entry.get("json"), str):
            raise DataError(f"{field}.json must be a file name (a string), got {entry.get('json')!r:.60}")
        if "image_size" in entry:
            size = entry["image_size"]
            if (not isinstance(size, list) or len(size) != 2 or size[0] != size[1]
                    or isinstance(size[0], bool) or not isinstance(size[0], int)):
                raise DataError(f"{field}.image_size must be [side, side] (square images), got {size!r:.60}")
            _image_size(size[0], f"{field}.image_size")
        scenes = entry.get("scenes")
        if scenes is not None:
            if not isinstance(scenes, list):
                raise DataError(f"{field}.scenes must be a list of objects, got {type(scenes).__name__}")
            for i, scene in enumerate(scenes):
                if not isinstance(scene, dict) or not isinstance(scene.get("image"), str):
                    raise DataError(f"{field}.scenes[{i}] must be an object with an 'image' name, got "
                                    f"{scene!r:.60}")


def read_dataset(data_dir: str | Path, image_size: int | None = None, splits: tuple[str, ...] = SPLITS,
                 expect_captions: int | None = 5, on_short: str = "error",
                 image_root: str | Path | None = None) -> dict[str, CaptionedImages]:
    """Read the splits of a data folder (with or without metadata.json; without it, `images/` and
    `<split>.json` are looked for). `image_size` None: the size recorded in the metadata. `image_root` None: the
    folder the metadata names, which must lie inside `data_dir`; a path given here is the caller's choice and is
    used as it is (images elsewhere on disk, e.g. a shared Flickr30K download)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data folder {data_dir} does not exist")
    meta_path = data_dir / "metadata.json"
    if meta_path.is_file():
        meta = read_metadata(data_dir)
    else:
        meta = {"image_root": IMAGE_ROOT,
                "splits": {s: {"json": f"{s}.json"} for s in SPLITS if (data_dir / f"{s}.json").is_file()}}
    if image_size is not None:
        image_size = _image_size(image_size, "image size")
    if image_root is not None:
        root = Path(image_root)
    else:
        root = path_inside(data_dir, meta.get("image_root", IMAGE_ROOT), str(meta_path), "image_root")
    out = {}
    for split in splits:
        entry = meta["splits"].get(split)
        if entry is None:
            continue
        size = image_size
        if size is None:
            if "image_size" not in entry:
                raise DataError(f"{data_dir} records no image size for the {split} split: give one")
            size = entry["image_size"][0]
        json_path = path_inside(data_dir, entry["json"], f"{meta_path}: splits.{split}", "json")
        data = read_split(json_path, root, split, size, expect_captions=expect_captions, on_short=on_short)
        scenes = entry.get("scenes")
        if scenes is not None:
            by_name = {s["image"]: s for s in scenes}
            missing = [n for n in data.names if n not in by_name]
            if missing:
                raise DataError(f"{meta_path}: splits.{split}.scenes has no entry for image {missing[0]!r}")
            attributes = [by_name[n].get("attributes") for n in data.names]
            canonical = [by_name[n].get("canonical") for n in data.names]
            data = CaptionedImages(images=data.images, captions=data.captions, names=data.names,
                                   attributes=None if any(a is None for a in attributes) else attributes,
                                   canonical=None if any(c is None for c in canonical) else canonical)
        out[split] = data
    if not out:
        raise DataError(f"{data_dir}: none of the splits {list(splits)} found")
    return out
