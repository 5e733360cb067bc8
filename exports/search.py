"""Exact top-k inner-product search in blocks (NumPy only), and an optional FAISS backend.

Retrieval scores are inner products of L2-normalised embeddings (cosine similarities). For Q queries and a
gallery of N rows, the full (Q, N) score matrix of a large gallery does not fit in memory, and a full
`argpartition` over it costs more than the matrix product itself. `exact_topk` therefore walks the gallery in
blocks and keeps, for each query, its best k so far and their smallest score (the row's *threshold*):

- scores of one block: `S = queries @ block.T`, shape (Q, b), written into one reused buffer;
- a row whose block maximum does not beat its threshold is skipped (after the first blocks, nearly all rows);
- in the other rows, the entries above the threshold (at most the block's top k, found with a partition when
  there are many) are merged with the kept k by score, then index.

Memory is the gallery, held dimension-major as (D, N) (`ExactIndex`), plus one (Q, b) block whose size follows
from `block_bytes`. Results are exact and deterministic: sorted by descending score, ties broken by the lower
gallery index, which is what a stable sort of the full score row would give.
"""

from __future__ import annotations

import numpy as np

# Bytes of one (Q, b) score block: 1 MiB, i.e. b = 1024 gallery rows for a batch of 256 queries (the product still
# runs at full speed and the block stays in cache) and b = 262144 rows for one query (see docs/export.md).
DEFAULT_BLOCK_BYTES = 1 << 20
# A block row with more than max(4 k, b / 32) entries above its threshold is cut to its top k by a partition of
# the row before the merge (a partition costs about as much as sorting b / 32 candidates).
_PARTITION_FACTOR, _PARTITION_SHARE = 4, 32
# The first block holds max(16 k, 1024) rows (or fewer, if the block size is smaller).
_FIRST_BLOCK_FACTOR, _FIRST_BLOCK_MIN = 16, 1024


def _check_2d(name: str, array: np.ndarray) -> None:
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {shape}")
    if array.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {array.dtype}")


def block_rows(n_queries: int, n_gallery: int, k: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> int:
    """Gallery rows per block so that a (n_queries, rows) float32 score block takes about `block_bytes`."""
    rows = max(int(block_bytes) // (4 * max(n_queries, 1)), k, 1)
    return min(rows, max(n_gallery, 1))


class ExactIndex:
    """Exact inner-product search over a gallery of N embeddings of dim D, held dimension-major.

    The gallery is kept as its transpose `columns`, float32 (D, N), C-contiguous: a query batch of one then runs
    BLAS's streaming matrix-vector kernel, which reads the gallery at the machine's memory bandwidth, where the
    row-major (N, D) layout ran at about half of it on the project's machine (docs/export.md).
    """

    def __init__(self, embeddings: np.ndarray, *, block_bytes: int = DEFAULT_BLOCK_BYTES):
        _check_2d("embeddings", embeddings)
        self.columns = np.ascontiguousarray(embeddings.T)  # (D, N)
        self.block_bytes = int(block_bytes)

    @classmethod
    def from_columns(cls, columns: np.ndarray, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> ExactIndex:
        """An index over a gallery already stored as float32 (D, N), e.g. a read-only `np.memmap`, not copied."""
        _check_2d("columns", columns)
        index = cls.__new__(cls)
        index.columns, index.block_bytes = columns, int(block_bytes)
        return index

    @property
    def size(self) -> int:
        return self.columns.shape[1]

    @property
    def dim(self) -> int:
        return self.columns.shape[0]

    def search(self, queries: np.ndarray, k: int, rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The k gallery rows with the largest inner product with each query.

        queries: float32 (Q, D). Returns (scores float32 (Q, k'), indices int64 (Q, k')) with k' = min(k, N),
        each row sorted by descending score, ties by ascending index. `rows` restricts the search to a contiguous
        slice of the gallery (the indices returned stay those of the whole gallery).
        """
        _check_2d("queries", queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]} but the gallery has dim {self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not np.isfinite(queries).all():
            raise ValueError("queries contain NaN or infinite values")
        if rows is not None and (not isinstance(rows, slice) or rows.step not in (None, 1)):
            raise ValueError(f"rows must be a contiguous slice of the gallery (step 1), got {rows!r}")
        start, stop = (0, self.size) if rows is None else rows.indices(self.size)[:2]
        n, q = max(stop - start, 0), queries.shape[0]
        k = min(int(k), n)
        if k == 0 or q == 0:
            return np.zeros((q, k), np.float32), np.zeros((q, k), np.int64)
        queries = np.ascontiguousarray(queries)
        b = block_rows(q, n, k, self.block_bytes)
        buffer = np.empty((q, b), np.float32)
        top = _RunningTopK(q, k)
        # A short first block sets every row's threshold cheaply; the long blocks after it are mostly skipped.
        lo, hi = start, min(start + min(b, max(_FIRST_BLOCK_FACTOR * k, _FIRST_BLOCK_MIN)), stop)
        while lo < stop:
            scores = buffer[:, : hi - lo]
            # One block of cosine scores: (Q, D) @ (D, b) -> (Q, b).
            np.matmul(queries, self.columns[:, lo:hi], out=scores)
            top.update(scores, lo)
            lo, hi = hi, min(hi + b, stop)
        return top.scores, top.indices


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, *, block_bytes: int = DEFAULT_BLOCK_BYTES,
               rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-off exact search of float32 (Q, D) queries in a float32 (N, D) gallery; see `ExactIndex.search`.

    Builds the dimension-major copy each call: keep an `ExactIndex` to search the same gallery repeatedly.
    """
    return ExactIndex(gallery, block_bytes=block_bytes).search(queries, k, rows=rows)


class _RunningTopK:
    """The best k (score, index) pairs of each of q rows seen so far, each row sorted (score desc, index asc)."""

    def __init__(self, q: int, k: int):
        self.k = k
        self.scores = np.full((q, k), -np.inf, np.float32)
        self.indices = np.full((q, k), -1, np.int64)
        self.threshold = np.full(q, -np.inf, np.float32)  # (q,) the k-th best score so far
        self.filled = False

    def update(self, scores: np.ndarray, offset: int) -> None:
        """Merge a (q, b) block of scores whose column j is gallery row offset + j."""
        k, b = self.k, scores.shape[1]
        if self.filled:
            # Only rows whose block maximum beats their threshold can change; later equal scores lose the tie.
            rows = np.flatnonzero(scores.max(axis=1) > self.threshold)
            if rows.size == 0:
                return
            block = scores if rows.size == scores.shape[0] else scores[rows]
        else:
            rows, block = np.arange(scores.shape[0]), scores
        above = block > self.threshold[rows, None]  # (r, b)
        limit = max(_PARTITION_FACTOR * k, b // _PARTITION_SHARE)
        crowded = np.flatnonzero(np.count_nonzero(above, axis=1) > limit) if b > k else np.empty(0, np.int64)
        if crowded.size:
            # Keep each crowded row's top k of this block (all entries tied with its k-th value, so ties stay exact).
            kth = np.partition(block[crowded], b - k, axis=1)[:, b - k]
            above[crowded] &= block[crowded] >= kth[:, None]
        r, c = np.nonzero(above)
        self._merge(rows, r, block[r, c], c.astype(np.int64) + offset)
        self.filled = True

    def _merge(self, rows: np.ndarray, r: np.ndarray, new_scores: np.ndarray, new_indices: np.ndarray) -> None:
        """Merge candidates (local row r, score, index) into the kept rows `rows`; keep the best k of each."""
        k, m = self.k, rows.size
        all_rows = np.concatenate([np.repeat(np.arange(m), k), r])
        all_scores = np.concatenate([self.scores[rows].ravel(), new_scores])
        all_indices = np.concatenate([self.indices[rows].ravel(), new_indices])
        # Placeholders (index -1, score -inf) sort last within their row.
        order = np.lexsort((np.where(all_indices < 0, np.iinfo(np.int64).max, all_indices), -all_scores, all_rows))
        sorted_rows = all_rows[order]
        starts = np.searchsorted(sorted_rows, np.arange(m))
        keep = order[(np.arange(order.size) - starts[sorted_rows]) < k]  # every row holds >= k entries
        self.scores[rows] = all_scores[keep].reshape(m, k)
        self.indices[rows] = all_indices[keep].reshape(m, k)
        self.threshold[rows] = self.scores[rows, -1]


def faiss_available() -> bool:
    """True when the optional `faiss` package can be imported."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class FaissFlatIndex:
    """FAISS `IndexFlatIP` over the same gallery: exact inner-product search, for users who have faiss.

    `blas_threshold` lowers FAISS's switch to BLAS for batched queries (its default of 20 queries is kept only
    when asked for); below it FAISS scans with its own SIMD loop, which is much slower for batches here.
    """

    def __init__(self, gallery: np.ndarray, threads: int = 1, blas_threshold: int | None = 20):
        _check_2d("gallery", gallery)
        try:
            import faiss
        except ImportError as error:
            raise ValueError("backend 'faiss' needs the optional package faiss (pip install faiss-cpu)") from error
        self._faiss = faiss
        faiss.omp_set_num_threads(int(threads))
        if blas_threshold is not None:
            faiss.cvar.distance_compute_blas_threshold = int(blas_threshold)
        self.index = faiss.IndexFlatIP(gallery.shape[1])
        self.index.add(np.ascontiguousarray(gallery))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (Q, k'), indices int64 (Q, k')), like `exact_topk` (ties may come in another order)."""
        _check_2d("queries", queries)
        k = min(int(k), self.index.ntotal)
        scores, indices = self.index.search(np.ascontiguousarray(queries), k)
        return scores.astype(np.float32), indices.astype(np.int64)
