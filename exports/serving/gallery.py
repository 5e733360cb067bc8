"""A gallery of retrievable items: image and caption embeddings with what they stand for (NumPy only).

Rows are images first, then captions: `embeddings[:n_images]` are image embeddings v, `embeddings[n_images:]`
caption embeddings t, all float32 unit rows of dim D. A gallery of images only, captions only, or both (mixed
retrieval) is the same object. Images may carry their pixels (uint8, at the model's input size) so that ITM
re-ranking works from the bundle alone, wherever it is copied.

On disk, inside a bundle: `gallery/embeddings.npy`, `gallery/items.json` and optionally `gallery/images.npy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rebalance_ref.files import read_json, save_npy_atomic, write_json_atomic

GALLERY_DIR = "gallery"
ITEMS_FORMAT = "rebalance-gallery"
ITEMS_VERSION = 1
KINDS = ("image", "text")


@dataclass
class Gallery:
    """Embeddings (N, D) float32 = n_images image rows, then the caption rows, and their descriptions."""

    embeddings: np.ndarray                # (n_images + n_captions, D) float32, unit rows
    image_names: list[str]                # (n_images,) names or relative paths
    captions: list[str]                   # (n_captions,)
    caption_sources: list[str | None]     # (n_captions,) name of the image each caption describes, None if unknown
    pixels: np.ndarray | None = None      # (n_images, S, S, 3) uint8, for ITM re-ranking; None if not kept

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
        raise ValueError(f"modality must be 'image', 'text' or 'all', got {modality!r}")

    def describe(self, row: int) -> dict:
        """What gallery row `row` stands for: kind, index within its modality, and its name or caption."""
        row = int(row)
        if row < self.n_images:
            return {"kind": "image", "index": row, "name": self.image_names[row]}
        j = row - self.n_images
        return {"kind": "text", "index": j, "caption": self.captions[j], "image": self.caption_sources[j]}

    def save(self, bundle_dir: str | Path) -> list[str]:
        """Write the gallery files into `bundle_dir/gallery/` (each atomically); returns their relative paths."""
        folder = Path(bundle_dir) / GALLERY_DIR
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        arrays = {"embeddings.npy": self.embeddings}
        if self.pixels is not None:
            arrays["images.npy"] = self.pixels
        elif (folder / "images.npy").exists():
            (folder / "images.npy").unlink()
        for name, array in arrays.items():
            save_npy_atomic(folder / name, array)
            written.append(f"{GALLERY_DIR}/{name}")
        items = {"format": ITEMS_FORMAT, "version": ITEMS_VERSION, "image_names": self.image_names,
                 "captions": self.captions, "caption_sources": list(self.caption_sources)}
        write_json_atomic(folder / "items.json", items, indent=None)
        written.append(f"{GALLERY_DIR}/items.json")
        return written

    @classmethod
    def load(cls, bundle_dir: str | Path, dim: int | None = None) -> Gallery:
        """Read the gallery of a bundle (files assumed verified against the manifest by the caller)."""
        folder = Path(bundle_dir) / GALLERY_DIR
        path = folder / "items.json"
        items = read_json(path)
        if not isinstance(items, dict) or items.get("format") != ITEMS_FORMAT or items.get("version") != ITEMS_VERSION:
            raise ValueError(f"{path}: not a rebalance gallery of version {ITEMS_VERSION}")
        embeddings = np.load(folder / "embeddings.npy", allow_pickle=False)
        if dim is not None and (embeddings.ndim != 2 or embeddings.shape[1] != dim):
            raise ValueError(f"{folder / 'embeddings.npy'}: shape {embeddings.shape}, the bundle's model has D={dim}")
        pixels = np.load(folder / "images.npy", allow_pickle=False) if (folder / "images.npy").is_file() else None
        return cls(embeddings=embeddings, image_names=list(items["image_names"]), captions=list(items["captions"]),
                   caption_sources=list(items["caption_sources"]), pixels=pixels)
