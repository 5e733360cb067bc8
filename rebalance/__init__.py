"""rebalance: structure-aware distillation for vision-language retrieval, CPU-first.

The application package: the `rebalance` command line (`rebalance.cli`), the demo, the ablation, reports, plots
and benchmarks, built on three libraries below it — `rebalance_ref` (NumPy formulas, metrics, data),
`rebalance_torch` (the trainer) and `exports` (ONNX export and the torch-free retriever).

Importing `rebalance` stays light: no torch, no onnxruntime until a bundle is loaded. Serving needs neither torch
nor the trainer:

    import rebalance
    model = rebalance.load("runs/demo/bundle")          # a bundle, served with NumPy + onnxruntime only
    hits = model.search("a red circle", k=5)            # text -> the gallery's images, best first, ranks from 1
    hits = model.search("a red circle", k=5, codes=True, shortlist=100)  # binary codes, then exact re-ranking
    v = model.encode_image(["photo.png"]); t = model.encode(["a red circle", "a blue square"])   # (N, D) float32

`encode` follows sentence-transformers (one str gives a (D,) vector, a list (B, D)); `encode_image` and
`encode_text` follow open_clip (always a batch).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["load", "Model", "Retriever"]


def load(bundle_dir, *, threads: int = 1, **options) -> Model:
    """Open an exported bundle for encoding and search; torch is not needed.

    Checks the manifest and every file's SHA-256 first (`exports.serving.runtime.Retriever.load`, whose keyword
    options — provider, backend, verify_files — pass through)."""
    from exports.serving.runtime import Retriever

    return Model(Retriever.load(bundle_dir, threads=threads, **options))


def _is_image(item) -> bool:
    """An image for `Model.encode`: a Path, a PIL image or a uint8 array (a str is always text)."""
    return isinstance(item, Path) or (hasattr(item, "mode") and hasattr(item, "size")) or (
        isinstance(item, np.ndarray) and item.dtype == np.uint8)


class Model:
    """A loaded bundle: its two encoders and, when it holds one, its gallery to search.

    `retriever` is the `exports.serving.runtime.Retriever` underneath, for everything else (ITM scores,
    re-ranking options, building and saving a gallery)."""

    def __init__(self, retriever):
        self.retriever = retriever

    def __repr__(self) -> str:
        gallery = self.retriever.gallery
        held = "no gallery" if gallery is None else f"{gallery.n_images} images + {gallery.n_captions} captions"
        return f"rebalance.Model({str(self.retriever.bundle_dir)!r}, dim {self.dim}, {held})"

    @property
    def dim(self) -> int:
        """D, the width of every embedding."""
        return self.retriever.embed_dim

    @property
    def code_bits(self) -> int | None:
        """Bits of the bundle's binary codes, None for a bundle without code graphs."""
        return self.retriever.code_bits

    @property
    def gallery(self):
        """The bundle's `Gallery` (embeddings, names, captions, pixels), or None."""
        return self.retriever.gallery

    def encode_text(self, texts) -> np.ndarray:
        """float32 (B, D) unit rows for a str (B = 1) or a list of str."""
        return self.retriever.encode_texts(texts)

    def encode_image(self, images) -> np.ndarray:
        """float32 (N, D) unit rows for one image or a list of them: file paths (str or Path), PIL images, uint8
        (H, W, 3) arrays, or one uint8 (N, H, W, 3) array."""
        if isinstance(images, (str, Path)) or _is_image(images) and not (
                isinstance(images, np.ndarray) and images.ndim == 4):
            images = [images]
        return self.retriever.encode_images(images)

    def encode(self, inputs) -> np.ndarray:
        """Embeddings of texts or images: a str, a PIL image, a Path or a uint8 (H, W, 3) array gives (D,); a list
        of them, or a uint8 (N, H, W, 3) array, gives (N, D). Strings are texts: pass image files as Path, or use
        `encode_image`."""
        if isinstance(inputs, str):
            return self.encode_text([inputs])[0]
        if isinstance(inputs, np.ndarray) and inputs.ndim == 4:
            return self.encode_image(inputs)
        if _is_image(inputs):
            return self.encode_image([inputs])[0]
        items = list(inputs)
        if items and all(isinstance(item, str) for item in items):
            return self.encode_text(items)
        if items and all(_is_image(item) for item in items):
            return self.encode_image(items)
        if not items:
            return np.zeros((0, self.dim), np.float32)
        raise ValueError("encode takes texts (str) or images (Path, PIL image, uint8 array), one or a list of one "
                         "kind, got " + ", ".join(sorted({type(item).__name__ for item in items})))

    def search(self, query, k: int = 5, *, modality: str | None = None, rerank: bool = False,
               rerank_k: int | None = None, codes: bool = False, shortlist: int | None = None):
        """The k best gallery items for a query, best first (ranks from 1): a list of `Hit`.

        query: a str (text -> images by default), an image (Path, PIL image, uint8 (H, W, 3) array: image ->
        captions by default), or embeddings of any float dtype, (D,) or (Q, D) (-> the whole gallery by default).
        A list of str, or (Q, D) embeddings, gives one list of hits per query. `modality` picks "image", "text" or
        "all"; `rerank` re-scores cross-modal candidates with the ITM head. `codes` searches by Hamming distance
        over the gallery's binary codes (a bundle exported with codes), `shortlist` M then re-ranks the Hamming top
        M exactly by cosine; each hit then carries its `hamming` distance."""
        options = {"k": k, "modality": modality, "rerank": rerank, "rerank_k": rerank_k, "codes": codes,
                   "shortlist": shortlist}
        if isinstance(query, str):
            return self.retriever.search(texts=[query], **options)[0]
        if isinstance(query, np.ndarray) and np.issubdtype(query.dtype, np.floating):
            if rerank:
                raise ValueError("rerank needs a text or an image query, not embeddings")
            if codes or shortlist is not None:
                raise ValueError("codes need a text or an image query (each modality has its own code head), not "
                                 "embeddings; use model.retriever.search_codes(embeddings, kind, k) for those")
            hits = self.retriever.search_vectors(query, k, modality or "all")
            return hits[0] if query.ndim == 1 else hits
        if _is_image(query) and not (isinstance(query, np.ndarray) and query.ndim == 4):
            return self.retriever.search(images=[query], **options)[0]
        if isinstance(query, np.ndarray):
            return self.retriever.search(images=query, **options)
        items = list(query)
        if items and all(isinstance(item, str) for item in items):
            return self.retriever.search(texts=items, **options)
        return self.retriever.search(images=items, **options)

    def image(self, hit) -> np.ndarray | None:
        """The picture of a hit (for a caption, the image it describes) from the bundle: uint8 (S, S, 3) or None."""
        return self.retriever.hit_pixels(hit)

    def save_grid(self, path, hits, *, query=None):
        """Write a PNG contact sheet of `hits` (and the query: a str or a uint8 (H, W, 3) image) to `path`."""
        from rebalance.contact_sheet import write_contact_sheet

        text = query if isinstance(query, str) else None
        pixels = None
        if query is not None and text is None:
            pixels = self.retriever.pixels([query])[0]
        return write_contact_sheet(path, self.retriever, hits, query_text=text, query_image=pixels)


def __getattr__(name: str):
    if name == "Retriever":  # imported on first use, so that `import rebalance` does not load onnxruntime
        from exports.serving.runtime import Retriever

        return Retriever
    raise AttributeError(f"module 'rebalance' has no attribute {name!r}")
