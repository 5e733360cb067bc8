"""The torch-free retriever: a bundle served with NumPy and onnxruntime alone.

    from exports.serving.runtime import Retriever
    retriever = Retriever.load("bundle", threads=1)          # refuses missing / tampered / unknown bundles
    v = retriever.encode_images(images_uint8)                 # (N, H, W, 3) uint8 or a list of image files
    t = retriever.encode_texts(["a red circle"])              # (B, D) float32, unit rows (a str gives (1, D))
    retriever.set_gallery(retriever.build_gallery(images=..., image_names=..., captions=..., caption_sources=...))
    hits = retriever.search_text("a red circle", k=5)         # exact top-k images (the other modality)
    hits = retriever.search_text("a red circle", k=5, modality="all")  # images and captions together
    hits = retriever.search_text("a red circle", k=5, rerank=True)   # top-k images re-scored by the ITM head
    hits = retriever.search_text("a red circle", k=5, codes=True)    # Hamming top-k over the gallery's codes
    hits = retriever.search_text("a red circle", k=5, codes=True, shortlist=100)  # Hamming top 100, exact re-rank
    retriever.hit_pixels(hits[0])                             # the hit's image, from the bundle alone

A query searches the other modality by default (text -> images, image -> captions), or its own when the gallery
holds only that one; ranks are 1-based.

This module imports numpy, onnxruntime, Pillow (image files) and the torch-free parts of rebalance_ref only; a
test runs it with torch blocked from importing. Search is exact (`exports.serving.search.ExactIndex`, or FAISS
`IndexFlatIP` with `backend="faiss"` when faiss is installed), or, for a bundle with code graphs and a gallery
indexed with codes, Hamming top-k over packed binary codes (`exports.serving.codes.HammingIndex`), optionally with
the Hamming top `shortlist` re-ranked exactly by the float embeddings (`rerank_exact`). Thread counts are
explicit: `threads` sets both onnxruntime's intra-op threads and NumPy's BLAS threads (process-wide).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from exports.serving.codes import HammingIndex, pack_codes, rerank_exact
from exports.serving.gallery import GALLERY_DIR, Gallery
from exports.serving.manifest import BundleError, bundle_lock, read_manifest, write_manifest
from exports.serving.search import ExactIndex, FaissFlatIndex
from rebalance_ref.files import read_json
from rebalance_ref.images import load_image, resize_to, to_model_input, to_rgb8
from rebalance_ref.threads import set_threads
from rebalance_ref.tokenizer import Tokenizer

BACKENDS = ("numpy", "faiss")
DEFAULT_PROVIDER = "CPUExecutionProvider"
# Candidates re-scored by ITM when the bundle records no k_test (the trainer's default).
DEFAULT_RERANK_K = 16
_EXPECTED_INPUTS = {"image_encoder": ["images"], "text_encoder": ["ids", "mask"],
                    "fusion_itm": ["images", "ids", "mask"]}
# Every code graph (named by the manifest's `codes.graphs`) takes unit embeddings float32 (B, D) -> h (B, bits).
_CODE_INPUTS = ["embeddings"]
SEARCH_METHODS = ("exact", "hamming", "hamming+exact")


@dataclass
class Hit:
    """One search result. `score` is the cosine similarity; `itm` the ITM matched logit when re-ranked.

    `pixels` says where the hit's image lies in the bundle ("gallery/images.npy[i]"; for a caption, its image's),
    so a hit is shown from the bundle alone (`Retriever.hit_pixels`); `name` and `image` are labels."""

    rank: int                # 1-based
    row: int                 # row of the gallery
    kind: str                # "image" or "text"
    index: int               # index within its modality
    score: float
    name: str | None = None      # the image's name (kind "image")
    caption: str | None = None   # the caption (kind "text")
    image: str | None = None     # the caption's image, when known (kind "text")
    pixels: str | None = None    # "gallery/images.npy[i]": the image's pixels in the bundle, when kept
    itm: float | None = None
    hamming: int | None = None   # Hamming distance of the query's code to the hit's (code search only)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Retriever:
    """Encoders, tokenizer and (optionally) a gallery of one bundle; exact top-k search with ITM re-ranking."""

    def __init__(self, bundle_dir: Path, manifest: dict, sessions: dict, tokenizer: Tokenizer, threads: int,
                 provider: str, backend: str):
        self.bundle_dir, self.manifest, self.sessions, self.tokenizer = bundle_dir, manifest, sessions, tokenizer
        self.threads, self.provider, self.backend = threads, provider, backend
        self.gallery: Gallery | None = None
        self._index = None
        self._faiss: dict[str, FaissFlatIndex] = {}
        self._hamming: dict[str, HammingIndex] = {}

    # --- loading ---------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, bundle_dir: str | Path, *, threads: int = 1, provider: str = DEFAULT_PROVIDER,
             backend: str = "numpy", verify_files: bool = True, load_gallery: bool = True) -> Retriever:
        """Open a bundle after checking its manifest, format version and every file's SHA-256.

        threads: onnxruntime intra-op threads and NumPy BLAS threads (>= 1). provider: an onnxruntime execution
        provider available here. backend: "numpy" (exact blocked search) or "faiss" (IndexFlatIP; needs faiss).
        """
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {threads!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        available = ort.get_available_providers()
        if provider not in available:
            raise ValueError(f"provider {provider!r} is not available in this onnxruntime; available: "
                             f"{', '.join(available)}")
        bundle_dir = Path(bundle_dir)
        manifest = read_manifest(bundle_dir, verify_files=verify_files)
        graphs = manifest["onnx"]["graphs"]  # checked by read_manifest
        for required in ("image_encoder", "text_encoder"):
            if required not in graphs:
                raise BundleError(f"{bundle_dir}: the manifest names no {required} graph")
        set_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions = {}
        code_graphs = set((manifest.get("codes") or {}).get("graphs", {}).values())  # checked by read_manifest
        for name, graph in graphs.items():
            expected = _CODE_INPUTS if name in code_graphs else _EXPECTED_INPUTS.get(name)
            if expected is None:
                continue
            if graph.get("file") not in manifest["files"]:
                raise BundleError(f"{bundle_dir}: graph {name} file {graph.get('file')!r} is not listed with a hash")
            try:
                session = ort.InferenceSession(str(bundle_dir / graph["file"]), options, providers=[provider])
            except Exception as error:  # noqa: BLE001 - onnxruntime raises its own exception types
                raise BundleError(f"{bundle_dir / graph['file']}: onnxruntime cannot load it ({error})") from None
            inputs = [i.name for i in session.get_inputs()]
            if inputs != expected:
                raise BundleError(f"{bundle_dir / graph['file']}: inputs {inputs}, expected {expected}")
            sessions[name] = session
        tokenizer = Tokenizer.load(bundle_dir / "tokenizer.json")
        if tokenizer.vocab_size != manifest["model"]["vocab_size"]:
            raise BundleError(f"{bundle_dir}: tokenizer has {tokenizer.vocab_size} words, the model expects "
                              f"{manifest['model']['vocab_size']}")
        retriever = cls(bundle_dir, manifest, sessions, tokenizer, threads, provider, backend)
        if load_gallery and manifest.get("gallery"):
            retriever.set_gallery(Gallery.load(bundle_dir, manifest["files"], dim=retriever.embed_dim))
        return retriever

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["model"]["embed_dim"])

    @property
    def image_size(self) -> int:
        return int(self.manifest["model"]["image_size"])

    @property
    def max_len(self) -> int:
        return int(self.manifest["model"]["max_len"])

    @property
    def has_itm(self) -> bool:
        return "fusion_itm" in self.sessions

    @property
    def code_bits(self) -> int | None:
        """Bits of the bundle's binary codes (format version 2 with code graphs), None without."""
        codes = self.manifest.get("codes")
        return int(codes["bits"]) if codes else None

    @property
    def has_codes(self) -> bool:
        return self.code_bits is not None

    # --- encoding --------------------------------------------------------------------------------------------
    def pixels(self, images) -> np.ndarray:
        """uint8 (N, S, S, 3) at the model's size from a uint8 (N, H, W, 3) array, or a sequence whose items are
        image files (str or Path), PIL images or uint8 (H, W, 3) arrays."""
        size = self.image_size
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"images must be uint8 (N, H, W, 3) or a list of image files, got "
                                 f"{images.dtype} {images.shape}")
            if images.shape[1:3] == (size, size):
                return images
            return np.stack([resize_to(im, size) for im in images]) if len(images) else \
                np.zeros((0, size, size, 3), np.uint8)
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            raise ValueError("images must be a uint8 array (N, H, W, 3) or a list of image files, PIL images or "
                             "uint8 (H, W, 3) arrays")
        if not images:
            return np.zeros((0, size, size, 3), np.uint8)
        return np.stack([self._one_image(item, i) for i, item in enumerate(images)])

    def _one_image(self, item, position: int) -> np.ndarray:
        """One image of a sequence as uint8 (S, S, 3)."""
        if isinstance(item, (str, Path)):
            return load_image(item, self.image_size)
        if isinstance(item, np.ndarray):
            if item.dtype != np.uint8 or item.ndim != 3 or item.shape[2] != 3:
                raise ValueError(f"image {position} must be uint8 (H, W, 3), got {item.dtype} {item.shape}")
            return resize_to(item, self.image_size)
        if hasattr(item, "mode") and hasattr(item, "size"):  # a PIL image
            return resize_to(to_rgb8(item, f"image {position}"), self.image_size)
        raise ValueError(f"image {position} must be an image file path, a PIL image or a uint8 (H, W, 3) array, "
                         f"got {type(item).__name__}")

    def encode_images(self, images, batch_size: int = 64) -> np.ndarray:
        """Image embeddings v, float32 (N, D) unit rows, from uint8 (N, H, W, 3) or a list of image files."""
        pixels = self.pixels(images)
        out = np.empty((len(pixels), self.embed_dim), np.float32)
        for lo in range(0, len(pixels), batch_size):
            (out[lo:lo + batch_size],) = self.sessions["image_encoder"].run(
                None, {"images": to_model_input(pixels[lo:lo + batch_size])})
        return out

    def _tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.encode(texts, max_len=self.max_len)

    def encode_texts(self, texts: Sequence[str] | str, batch_size: int = 256) -> np.ndarray:
        """Text embeddings t, float32 (B, D) unit rows (one str gives B = 1); each batch is padded to its longest."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise ValueError(f"texts must be str, got {type(texts[bad]).__name__} at position {bad}")
        out = np.empty((len(texts), self.embed_dim), np.float32)
        for lo in range(0, len(texts), batch_size):
            ids, mask = self._tokens(texts[lo:lo + batch_size])
            (out[lo:lo + batch_size],) = self.sessions["text_encoder"].run(None, {"ids": ids, "mask": mask})
        return out

    def itm_logits(self, pixels: np.ndarray, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """ITM matched logits (B,) of pairs (pixels[i], texts[i]); pixels uint8 (B, S, S, 3)."""
        if not self.has_itm:
            raise ValueError(f"bundle {self.bundle_dir} has no fusion_itm graph: re-ranking is not available")
        pixels = self.pixels(pixels)
        if len(pixels) != len(texts):
            raise ValueError(f"itm_logits needs one text per image, got {len(pixels)} images, {len(texts)} texts")
        out = np.empty(len(texts), np.float32)
        for lo in range(0, len(texts), batch_size):
            ids, mask = self._tokens(list(texts[lo:lo + batch_size]))
            (logits,) = self.sessions["fusion_itm"].run(
                None, {"images": to_model_input(pixels[lo:lo + batch_size]), "ids": ids, "mask": mask})
            out[lo:lo + batch_size] = logits[:, 1]
        return out

    def code_values(self, embeddings: np.ndarray, kind: str, batch_size: int = 4096) -> np.ndarray:
        """The relaxed codes h float32 (N, bits) of unit embeddings (N, D) of one kind ("image" or "text"),
        through that modality's code graph; the code is h > 0."""
        if not self.has_codes:
            raise ValueError(f"bundle {self.bundle_dir} has no code graphs: train hash heads with `rebalance codes "
                             f"train --run RUN` and export the run again")
        if kind not in ("image", "text"):
            raise ValueError(f"kind must be 'image' or 'text' (the code head to use), got {kind!r}")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"embeddings must be (N, {self.embed_dim}), got shape {embeddings.shape}")
        session = self.sessions[self.manifest["codes"]["graphs"][kind]]
        out = np.empty((len(embeddings), self.code_bits), np.float32)
        for lo in range(0, len(embeddings), batch_size):
            (out[lo:lo + batch_size],) = session.run(None, {"embeddings": embeddings[lo:lo + batch_size]})
        return out

    def encode_codes(self, embeddings: np.ndarray, kind: str) -> np.ndarray:
        """Packed binary codes uint8 (N, bits / 8) of unit embeddings (N, D) of one kind (`code_values`)."""
        return pack_codes(self.code_values(embeddings, kind))

    # --- gallery ---------------------------------------------------------------------------------------------
    def build_gallery(self, *, images=None, image_names: Sequence[str] | None = None,
                      captions: Sequence[str] | None = None, caption_sources: Sequence[str | None] | None = None,
                      keep_pixels: bool = True) -> Gallery:
        """Embed images (uint8 array or files) and/or captions into a `Gallery` (images first, then captions),
        with their packed codes when the bundle has code graphs."""
        if images is None and not captions:
            raise ValueError("build_gallery needs images, captions or both")
        pixels = self.pixels(images) if images is not None else np.zeros((0, self.image_size, self.image_size, 3),
                                                                         np.uint8)
        if image_names is None:
            image_names = ([str(p) for p in images] if images is not None and not isinstance(images, np.ndarray)
                           else [f"image-{i}" for i in range(len(pixels))])
        captions = list(captions or [])
        sources = list(caption_sources) if caption_sources is not None else [None] * len(captions)
        v = self.encode_images(pixels)
        t = self.encode_texts(captions) if captions else np.zeros((0, self.embed_dim), np.float32)
        codes = np.concatenate([self.encode_codes(v, "image"), self.encode_codes(t, "text")]) if self.has_codes \
            else None
        return Gallery(embeddings=np.concatenate([v, t]), image_names=list(image_names), captions=captions,
                       caption_sources=sources, pixels=pixels if keep_pixels and len(pixels) else None, codes=codes)

    def set_gallery(self, gallery: Gallery) -> None:
        """Search this gallery from now on (its index is built here, once).

        With the numpy backend, `gallery.embeddings` becomes a transposed view of the index's dimension-major
        copy (same values), so the embeddings are held once in memory.
        """
        if gallery.embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"gallery has dim {gallery.embeddings.shape[1]}, the bundle's model has {self.embed_dim}")
        if gallery.codes is not None and gallery.code_bits != self.code_bits:
            raise ValueError(f"the gallery's codes have {gallery.code_bits} bits but the bundle's code graphs make "
                             f"{self.code_bits or 'no codes'}; index the gallery again with this bundle")
        self.gallery = gallery
        self._hamming = {}
        self._index = ExactIndex(gallery.embeddings) if self.backend == "numpy" else None
        if self._index is not None:
            gallery.embeddings = self._index.columns.T  # (N, D) view of the (D, N) index
        self._faiss = {}

    def save_gallery(self) -> None:
        """Write the current gallery into the bundle and record its files in the manifest.

        Holds the bundle's writer lock (`manifest.bundle_lock`), refuses a bundle whose manifest changed since it
        was loaded (another writer came first), and records the hashes of the bytes it wrote; the other files keep
        the records verified at load."""
        if self.gallery is None:
            raise ValueError("no gallery to save: call set_gallery first")
        with bundle_lock(self.bundle_dir):
            on_disk = read_json(self.bundle_dir / "manifest.json", error=BundleError)
            if on_disk != self.manifest:
                raise BundleError(f"bundle {self.bundle_dir} changed since it was loaded (another export or index "
                                  f"wrote to it); load it again, then save")
            records = {name: record for name, record in self.manifest["files"].items()
                       if not name.startswith(f"{GALLERY_DIR}/")}
            records.update(self.gallery.save(self.bundle_dir))
            manifest = dict(self.manifest)
            manifest["gallery"] = {"folder": GALLERY_DIR, "n_images": self.gallery.n_images,
                                   "n_captions": self.gallery.n_captions, "pixels": self.gallery.pixels is not None}
            if self.gallery.codes is not None:
                manifest["gallery"]["code_bits"] = self.gallery.code_bits
            self.manifest = write_manifest(self.bundle_dir, manifest, records)

    # --- search ----------------------------------------------------------------------------------------------
    def search_embeddings(self, queries: np.ndarray, k: int, modality: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of float32 (Q, D) queries among the gallery rows of `modality`: (scores, rows) (Q, k')."""
        if self.gallery is None:
            raise ValueError("the retriever has no gallery: run `rebalance index` or call set_gallery first")
        rows = self.gallery.rows(modality)
        if self.backend == "numpy":
            return self._index.search(queries, k, rows=rows)
        if modality not in self._faiss:
            self._faiss[modality] = FaissFlatIndex(np.ascontiguousarray(self.gallery.embeddings[rows]),
                                                   threads=self.threads)
        scores, local = self._faiss[modality].search(queries, k)
        return scores, local + rows.start

    def search_codes(self, queries: np.ndarray, kind: str, k: int, modality: str = "all",
                     shortlist: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Code search of unit query embeddings (Q, D) of one kind ("image" or "text", which picks the code head)
        among the gallery rows of `modality`: Hamming top-k (ties by lower row), or with `shortlist` M the Hamming
        top M re-ranked exactly by cosine. Returns (cosine scores float32, rows int64, Hamming distances int32),
        each (Q, k'), in the order searched."""
        self.check_codes()
        if shortlist is not None and (isinstance(shortlist, bool) or not isinstance(shortlist, (int, np.integer))
                                      or shortlist < 1):
            raise ValueError(f"shortlist must be an int >= 1 (Hamming candidates re-ranked exactly), got "
                             f"{shortlist!r}")
        queries = np.asarray(queries, dtype=np.float32)
        rows = self.gallery.rows(modality)
        if modality not in self._hamming:
            self._hamming[modality] = HammingIndex(self.gallery.codes[rows])
        query_codes = self.encode_codes(queries, kind)
        depth = k if shortlist is None else max(int(shortlist), k)
        _, local = self._hamming[modality].search(query_codes, depth)  # (Q, depth) rows of the modality
        found = local + rows.start
        embeddings = self.gallery.embeddings
        if shortlist is None:
            scores = np.einsum("qd,qkd->qk", queries, embeddings[found]).astype(np.float32)
        else:
            scores, found = rerank_exact(queries, embeddings, found, k)
        distances = np.bitwise_count(query_codes[:, None, :] ^ self.gallery.codes[found]).sum(axis=2,
                                                                                               dtype=np.int32)
        return scores, found, distances

    def check_codes(self) -> None:
        """Raise ValueError unless code search can run: a bundle with code graphs and a gallery indexed with
        its codes."""
        if not self.has_codes:
            raise ValueError(f"bundle {self.bundle_dir} has no code graphs, so --codes cannot search it: train hash "
                             f"heads (`rebalance codes train --run RUN`), export the run again, then index")
        if self.gallery is None:
            raise ValueError("the retriever has no gallery: run `rebalance index` or call set_gallery first")
        if self.gallery.codes is None:
            raise ValueError(f"the gallery of {self.bundle_dir} was indexed without codes (before the bundle had "
                             f"code graphs): index it again (`rebalance index --force`) to search it by codes")

    def search_vectors(self, queries: np.ndarray, k: int = 5, modality: str = "all") -> list[list[Hit]]:
        """Top-k hits for query embeddings (Q, D) or (D,), of any float dtype (searched as float32), best first."""
        if self.gallery is None:
            raise ValueError("the retriever has no gallery: run `rebalance index` or call set_gallery first")
        queries = np.asarray(queries)
        queries = queries[None] if queries.ndim == 1 else queries
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        scores, rows = self.search_embeddings(queries, int(k), modality)
        return [[self._hit(r, int(row), float(s)) for r, (row, s) in enumerate(zip(rows[q], scores[q], strict=True),
                                                                                start=1)]
                for q in range(len(queries))]

    def _modality(self, query_kind: str, modality: str | None, rerank: bool) -> str:
        """The gallery rows to search: as asked, else the other modality (the question a cross-modal retriever
        answers), or the query's own when the gallery holds no item of the other."""
        other = "image" if query_kind == "text" else "text"
        if modality is None:
            has_other = self.gallery is None or (self.gallery.n_images if other == "image" else self.gallery.n_captions)
            return other if rerank or has_other else query_kind
        if rerank and modality != other:
            raise ValueError(f"rerank scores {query_kind}-{other} pairs with the ITM head: a {query_kind} query can "
                             f"be re-ranked only over modality {other!r}, got {modality!r}")
        return modality

    def search(self, *, texts: Sequence[str] | None = None, images=None, k: int = 5, modality: str | None = None,
               rerank: bool = False, rerank_k: int | None = None, codes: bool = False,
               shortlist: int | None = None) -> list[list[Hit]]:
        """Top-k hits for each query (texts, or images as uint8 (Q, H, W, 3) / files), best first.

        modality: "image", "text" or "all" (mixed); default: the other modality (text -> images, image ->
        captions), or the query's own when the gallery has none of the other. Ranks are 1-based.
        rerank: re-score the top `rerank_k` (default: the run's k_test, at least k) cross-modal candidates with
        the ITM matched logit, as the paper's evaluation does, and return the best k of them by that logit.
        codes: find the candidates by Hamming distance between binary codes (`search_codes`) instead of the exact
        float search; shortlist: with codes, re-rank the Hamming top `shortlist` exactly by cosine. Each hit of a
        code search carries its Hamming distance.
        """
        if (texts is None) == (images is None):
            raise ValueError("search needs exactly one of texts= or images=")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if self.gallery is None:
            raise ValueError("the retriever has no gallery: run `rebalance index` or call set_gallery first")
        k = int(k)
        if shortlist is not None and not codes:
            raise ValueError("shortlist re-ranks the Hamming candidates of a code search: use it with codes=True "
                             "(--codes)")
        if codes:
            self.check_codes()
        kind = "text" if texts is not None else "image"
        modality = self._modality(kind, modality, rerank)
        if kind == "text":
            texts = list(texts) if not isinstance(texts, str) else [texts]
            self.unknown_words(texts)  # refuses a query with no word, or none the vocabulary knows
            queries, query_pixels = self.encode_texts(texts), None
        else:
            query_pixels = self.pixels(images)
            queries = self.encode_images(query_pixels)
        depth = k
        if rerank:
            default = int(self.manifest.get("k_test") or DEFAULT_RERANK_K)
            depth = max(k, default if rerank_k is None else int(rerank_k))
        if codes:
            scores, rows, distances = self.search_codes(queries, kind, depth, modality, shortlist)
        else:
            (scores, rows), distances = self.search_embeddings(queries, depth, modality), None
        results = []
        for q in range(len(queries)):
            hits = [self._hit(r, int(row), float(s))
                    for r, (row, s) in enumerate(zip(rows[q], scores[q], strict=True), start=1)]
            if distances is not None:
                for hit, distance in zip(hits, distances[q], strict=True):
                    hit.hamming = int(distance)
            if rerank:
                hits = self._rerank(hits, texts[q] if kind == "text" else None,
                                    query_pixels[q] if kind == "image" else None)
            results.append(hits[:k])
        return results

    def unknown_words(self, texts: Sequence[str]) -> list[list[str]]:
        """Per query text, the words the bundle's vocabulary does not know (they are encoded as [UNK]: say so to
        the user). Raises DataError (a ValueError) for a text with no word, or with no word the vocabulary
        knows: its embedding would be the same for every such text."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [self.tokenizer.check_query(text, what="query" if len(texts) == 1 else f"query {i + 1}")
                for i, text in enumerate(texts)]

    def search_text(self, text: str, **options) -> list[Hit]:
        """`search` for one text; returns its hits."""
        return self.search(texts=[text], **options)[0]

    def search_image(self, image, **options) -> list[Hit]:
        """`search` for one image: a uint8 (H, W, 3) array or an image file path."""
        batch = image[None] if isinstance(image, np.ndarray) else [image]
        return self.search(images=batch, **options)[0]

    def hit_pixels(self, hit: Hit) -> np.ndarray | None:
        """The image of a hit (for a caption: the image it describes) as uint8 (S, S, 3), from the bundle's
        gallery; None when the gallery keeps no pixels or holds no image for that caption."""
        if self.gallery is None or self.gallery.pixels is None:
            return None
        index = hit.index if hit.kind == "image" else self.gallery.caption_image(hit.index)
        return None if index is None else self.gallery.pixels[index]

    def _hit(self, rank: int, row: int, score: float) -> Hit:
        info = self.gallery.describe(row)
        return Hit(rank=rank, row=row, kind=info["kind"], index=info["index"], score=score, name=info.get("name"),
                   caption=info.get("caption"), image=info.get("image"), pixels=info.get("pixels"))

    def _rerank(self, hits: list[Hit], text: str | None, pixels: np.ndarray | None) -> list[Hit]:
        """Order cross-modal candidates by ITM matched logit (ties: cosine order); ranks renumbered."""
        if text is not None:  # text query, image candidates: their stored pixels are needed
            if self.gallery.pixels is None:
                raise ValueError("this gallery keeps no image pixels, so image candidates cannot be re-ranked; "
                                 "index it again with pixels kept")
            pair_pixels = self.gallery.pixels[[h.index for h in hits]]
            pair_texts = [text] * len(hits)
        else:
            pair_pixels = np.repeat(pixels[None], len(hits), axis=0)
            pair_texts = [h.caption for h in hits]
        logits = self.itm_logits(pair_pixels, pair_texts) if hits else np.zeros(0, np.float32)
        order = sorted(range(len(hits)), key=lambda i: (-float(logits[i]), i))
        out = []
        for rank, i in enumerate(order, start=1):
            hit = hits[i]
            hit.itm, hit.rank = float(logits[i]), rank
            out.append(hit)
        return out


def index_split(retriever: Retriever, split, what: str = "both", keep_pixels: bool = True) -> Gallery:
    """Embed a `rebalance_ref.dataset.CaptionedImages` split as the retriever's gallery and return it.

    what: "both" (images and captions: mixed retrieval), "images" or "captions". Captions keep the name of their
    image (for display and for checking answers).
    """
    if what not in ("both", "images", "captions"):
        raise ValueError(f"what must be 'both', 'images' or 'captions', got {what!r}")
    _, captions = split.pairs()
    sources = [name for name, caps in zip(split.names, split.captions, strict=True) for _ in caps]
    with_images, with_captions = what in ("both", "images"), what in ("both", "captions")
    gallery = retriever.build_gallery(images=split.images if with_images else None,
                                      image_names=list(split.names) if with_images else [],
                                      captions=captions if with_captions else None,
                                      caption_sources=sources if with_captions else None, keep_pixels=keep_pixels)
    retriever.set_gallery(gallery)
    return gallery


def search_method(codes: bool, shortlist: int | None) -> str:
    """How a search found its candidates: "exact" (float), "hamming" (codes) or "hamming+exact" (re-ranked)."""
    return SEARCH_METHODS[0] if not codes else SEARCH_METHODS[1] if shortlist is None else SEARCH_METHODS[2]


def format_hits(hits: list[Hit]) -> str:
    """Hits as aligned text lines: rank (1-based), kind, cosine, Hamming distance (code search), ITM logit (when
    re-ranked), and the item."""
    lines = []
    for hit in hits:
        itm = "" if hit.itm is None else f"  itm {hit.itm:+.3f}"
        if hit.kind == "image":
            what = hit.name + (f"  [{hit.pixels}]" if hit.pixels else "")
        else:
            what = f'"{hit.caption}"' + (f"  [{hit.image}]" if hit.image else "")
        hamming = "" if hit.hamming is None else f"  hamming {hit.hamming:>3}"
        lines.append(f"{hit.rank:>3}. {hit.kind:<5}  cos {hit.score:+.3f}{hamming}{itm}  {what}")
    return "\n".join(lines)
