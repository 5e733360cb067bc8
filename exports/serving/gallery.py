"""A gallery of retrievable items: image and caption embeddings with what they stand for (NumPy only).

Rows are images first, then captions: `embeddings[:n_images]` are image embeddings v, `embeddings[n_images:]`
caption embeddings t, all float32 unit rows of dim D. A gallery of images only, captions only, or both (mixed
retrieval) is the same object. Images may carry their pixels (uint8, at the model's input size) so that ITM
re-ranking works from the bundle alone, wherever it is copied.

With a bundle that has code graphs (format version 2), each row also has its packed binary code (`codes`, uint8
(N, bits / 8), `exports.serving.codes.pack_codes`): image rows through the image head, caption rows through the
text head.

On disk, inside a bundle: `gallery/embeddings.npy`, `gallery/items.json` and optionally `gallery/images.npy` and
`gallery/codes.npy`.
`save` hashes the bytes it writes (not the files as they are on disk afterwards); `load` reads only files the
manifest lists, so a gallery file left out of the manifest is refused, never served unverified.

A hit is shown from the bundle alone: an image is its row of `images.npy` (`image_ref`), a caption is its text and
its image's row when that image is in the gallery (`caption_image`). `image_names` are labels (the names the data
folder used), not paths to open.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exports.serving.manifest import BundleError, bytes_record
from rebalance_ref.files import atomic_path, read_json

GALLERY_DIR = "gallery"
ITEMS_FORMAT = "rebalance-gallery"
ITEMS_VERSION = 1
KINDS = ("image", "text")
MODALITIES = KINDS + ("all",)  # what a search may ask for: one kind of item, or both (mixed retrieval)
REQUIRED = ("embeddings.npy", "items.json")
PIXELS = "images.npy"
CODES = "codes.npy"
OPTIONAL = (PIXELS, CODES)


@dataclass
class Gallery:
    """Embeddings (N, D) float32 = n_images image rows, then the caption rows, and their descriptions."""

    embeddings: np.ndarray                # (n_images + n_captions, D) float32, unit rows
    image_names: list[str]                # (n_images,) names or relative paths
    captions: list[str]                   # (n_captions,)
    caption_sources: list[str | None]     # (n_captions,) name of the image each caption describes, None if unknown
    pixels: np.ndarray | None = None      # (n_images, S, S, 3) uint8, for ITM re-ranking; None if not kept
    codes: np.ndarray | None = None       # (n_images + n_captions, bits / 8) uint8 packed codes; None without

    def __post_init__(self) -> None:
        e = self.embeddings
        if not isinstance(e, np.ndarray) or e.ndim != 2 or e.dtype != np.float32:
            raise ValueError(f"gallery embeddings must be float32 (N, D), got "
                             f"{getattr(e, 'dtype', type(e).__name__)} {getattr(e, 'shape', '')}")
        if e.shape[0] != len(self.image_names) + len(self.captions):
            raise ValueError(f"gallery has {e.shape[0]} embeddings but {len(self.image_names)} images + "
                             f"{len(self.captions)} captions")
        if len(self.caption_sources) != len(self.captions):
            raise ValueError(f"caption_sources must name one image (or None) per caption ({len(self.captions)}), "
                             f"got {len(self.caption_sources)}")
        if not np.isfinite(e).all():
            raise ValueError("gallery embeddings contain NaN or infinite values")
        if self.pixels is not None:
            p = self.pixels
            if p.dtype != np.uint8 or p.ndim != 4 or p.shape[0] != len(self.image_names) or p.shape[3] != 3:
                raise ValueError(f"gallery pixels must be uint8 ({len(self.image_names)}, S, S, 3), got "
                                 f"{p.dtype} {p.shape}")
        if self.codes is not None:
            c = self.codes
            if not isinstance(c, np.ndarray) or c.dtype != np.uint8 or c.ndim != 2 or c.shape[0] != e.shape[0] \
                    or c.shape[1] == 0:
                raise ValueError(f"gallery codes must be packed uint8 ({e.shape[0]}, bits / 8), one row per "
                                 f"embedding, got {getattr(c, 'dtype', type(c).__name__)} {getattr(c, 'shape', '')}")

    @property
    def code_bits(self) -> int | None:
        """Bits of the gallery's codes, None when it has none."""
        return None if self.codes is None else 8 * int(self.codes.shape[1])

    @property
    def n_images(self) -> int:
        return len(self.image_names)

    @property
    def n_captions(self) -> int:
        return len(self.captions)

    def rows(self, modality: str) -> slice:
        """The rows of one modality ("image" or "text") or of both ("all")."""
        if modality == "image":
            return slice(0, self.n_images)
        if modality == "text":
            return slice(self.n_images, self.n_images + self.n_captions)
        if modality == "all":
            return slice(0, self.n_images + self.n_captions)
        raise ValueError(f"modality must be one of {', '.join(MODALITIES)}, got {modality!r}")

    def describe(self, row: int) -> dict:
        """What gallery row `row` stands for: kind, index within its modality, and its name or caption."""
        row = int(row)
        if row < self.n_images:
            return {"kind": "image", "index": row, "name": self.image_names[row], "pixels": self.image_ref(row)}
        j = row - self.n_images
        source = self.caption_sources[j]
        image_index = self.caption_image(j)
        return {"kind": "text", "index": j, "caption": self.captions[j], "image": source,
                "pixels": None if image_index is None else self.image_ref(image_index)}

    def image_ref(self, index: int) -> str | None:
        """Where image `index`'s pixels lie in the bundle ("gallery/images.npy[i]"), None if not kept."""
        return None if self.pixels is None else f"{GALLERY_DIR}/{PIXELS}[{int(index)}]"

    def caption_image(self, index: int) -> int | None:
        """Index in this gallery of the image caption `index` describes, None if that image is not in it."""
        if not hasattr(self, "_by_name"):
            self._by_name = {name: i for i, name in reversed(list(enumerate(self.image_names)))}
        return self._by_name.get(self.caption_sources[int(index)])

    def save(self, bundle_dir: str | Path) -> dict[str, dict]:
        """Write the gallery files into `bundle_dir/gallery/` (each atomically); returns {relative path: record},
        the SHA-256 and size of the bytes written (`manifest.bytes_record`)."""
        folder = Path(bundle_dir) / GALLERY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        records = {f"{GALLERY_DIR}/embeddings.npy": _save_npy(folder / "embeddings.npy", self.embeddings)}
        if self.pixels is not None:
            records[f"{GALLERY_DIR}/{PIXELS}"] = _save_npy(folder / PIXELS, self.pixels)
        if self.codes is not None:
            records[f"{GALLERY_DIR}/{CODES}"] = _save_npy(folder / CODES, self.codes)
        items = {"format": ITEMS_FORMAT, "version": ITEMS_VERSION, "image_names": self.image_names,
                 "captions": self.captions, "caption_sources": list(self.caption_sources)}
        data = json.dumps(items).encode("utf-8")
        with atomic_path(folder / "items.json") as tmp:
            tmp.write_bytes(data)
        records[f"{GALLERY_DIR}/items.json"] = bytes_record(data)
        for name, kept in ((PIXELS, self.pixels), (CODES, self.codes)):
            if kept is None and (folder / name).exists():
                (folder / name).unlink()  # written by an earlier index of this bundle
        return records

    @classmethod
    def load(cls, bundle_dir: str | Path, files: dict, dim: int | None = None) -> Gallery:
        """Read the gallery of a bundle whose manifest lists `files` (verified by the caller, `read_manifest`).

        Every gallery file read must be listed: a file present on disk but missing from the manifest is refused."""
        bundle_dir = Path(bundle_dir)
        folder = bundle_dir / GALLERY_DIR
        for name in (*REQUIRED, *OPTIONAL):
            listed = f"{GALLERY_DIR}/{name}" in files
            if not listed and (name in REQUIRED or (folder / name).exists()):
                raise BundleError(f"bundle {bundle_dir}: {GALLERY_DIR}/{name} is not listed in the manifest's files, "
                                  f"so it cannot be verified (index the bundle again)")
        path = folder / "items.json"
        items = read_json(path, error=BundleError)
        if not isinstance(items, dict) or items.get("format") != ITEMS_FORMAT or items.get("version") != ITEMS_VERSION:
            raise BundleError(f"{path}: not a rebalance gallery of version {ITEMS_VERSION}")
        for key in ("image_names", "captions", "caption_sources"):
            if not isinstance(items.get(key), list):
                raise BundleError(f"{path}: '{key}' must be a list")
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        if dim is not None and (embeddings.ndim != 2 or embeddings.shape[1] != dim):
            raise BundleError(f"{folder / 'embeddings.npy'}: shape {embeddings.shape}, the bundle's model has D={dim}")
        pixels = np.load(folder / PIXELS, allow_pickle=False) if f"{GALLERY_DIR}/{PIXELS}" in files else None
        codes = np.load(folder / CODES, allow_pickle=False) if f"{GALLERY_DIR}/{CODES}" in files else None
        try:
            return cls(embeddings=embeddings, image_names=list(items["image_names"]),
                       captions=list(items["captions"]), caption_sources=list(items["caption_sources"]),
                       pixels=pixels, codes=codes)
        except ValueError as error:
            raise BundleError(f"bundle {bundle_dir}: {error}") from None


class _HashingWriter:
    """A write-only file that hashes every byte on its way to disk (NumPy writes a large array in chunks)."""

    def __init__(self, handle):
        self.handle, self.digest, self.size = handle, hashlib.sha256(), 0

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.digest.update(data)
        self.size += data.nbytes
        return self.handle.write(data)


def _save_npy(path: Path, array: np.ndarray) -> dict:
    """Write `array` as .npy atomically; returns the SHA-256 and size of the bytes written."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = _HashingWriter(handle)
        np.save(writer, array, allow_pickle=False)
    return {"sha256": writer.digest.hexdigest(), "bytes": writer.size}
