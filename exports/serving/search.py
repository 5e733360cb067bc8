"""Exact top-k inner-product search in blocks (NumPy only), and an optional FAISS backend.

Retrieval scores are inner products of L2-normalised embeddings (cosine similarities). For Q queries and a
gallery of N rows, the full (Q, N) score matrix of a large gallery does not fit in memory, and a full
`argpartition` over it costs more than the matrix product itself. `ExactIndex.search` therefore walks the gallery
in blocks and keeps, for each query, its best k so far and their smallest score (the query's *threshold*):

- scores of one block: `S = queries @ block`, shape (Q, b), written into one reused buffer; blocks grow from a
  short first one (which sets every threshold) to b rows, with b from `block_bytes`;
- one cheap pass of row maxima skips a block (or the queries) that cannot improve; elsewhere the entries above
  the threshold are the candidates (a query with very many is cut to its block top k by one partition);
- candidates are merged in batches: each (score, index) is packed into one int64 key that orders by score, then
  by lower index, and a partition of each query's kept and new keys gives its new top k and threshold.

The gallery is held dimension-major, (D, N): at Q = 1 the product is BLAS's streaming matrix-vector kernel,
which reads the gallery at memory bandwidth (the row-major layout ran at about half of it here). Memory beyond
the gallery is one (Q, b) block plus the candidates. Results are exact and deterministic: sorted by descending
score, ties broken by the lower gallery index, as a stable sort of the full score row would give.
"""

from __future__ import annotations

import numpy as np

# Bytes of one (Q, b) score block: 1 MiB, i.e. b = 1024 gallery rows for a batch of 256 queries (the product still
# runs at full speed and the block stays in cache) and b = 262144 rows for one query (see docs/export.md).
DEFAULT_BLOCK_BYTES = 1 << 20
# A block row with more than max(4 k, b / 32) entries above its threshold is cut to its top k by a partition of
# the row before the merge (a partition costs about as much as sorting b / 32 candidates).
_PARTITION_FACTOR, _PARTITION_SHARE = 4, 32
# The first block holds max(4 k, 64, 65536 / Q) rows (or fewer, if the block size is smaller); later blocks double.
_FIRST_BLOCK_FACTOR, _FIRST_BLOCK_MIN, _FIRST_BLOCK_SCORES = 4, 64, 65536
# Pending candidates are merged once there are more than max(q k, _MIN_FLUSH) of them.
_MIN_FLUSH = 4096
# When fewer than 1/4 of the queries beat their threshold in a block, only their rows are compared.
_HOT_SHARE = 4


def _check_2d(name: str, array: np.ndarray) -> np.ndarray:
    """`array` as float32 (rows, dim): any real floating dtype is converted (float16, float64, ...), anything
    else refused; a float32 array is returned as it is (not copied)."""
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {shape}")
    if array.dtype == np.float32:
        return array
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array (converted to float32), got {array.dtype}")
    with np.errstate(over="ignore"):
        return array.astype(np.float32)


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
        embeddings = _check_2d("embeddings", embeddings)
        self.columns = np.ascontiguousarray(embeddings.T)  # (D, N)
        self.block_bytes = int(block_bytes)

    @classmethod
    def from_columns(cls, columns: np.ndarray, *, block_bytes: int = DEFAULT_BLOCK_BYTES) -> ExactIndex:
        """An index over a gallery already stored as float32 (D, N), e.g. a read-only `np.memmap`, not copied."""
        columns = _check_2d("columns", columns)
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

        queries: (Q, D), any float dtype (searched as float32). Returns (scores float32 (Q, k'), indices int64
        (Q, k')) with k' = min(k, N),
        each row sorted by descending score, ties by ascending index. `rows` restricts the search to a contiguous
        slice of the gallery (the indices returned stay those of the whole gallery).
        """
        queries = _check_2d("queries", queries)
        if queries.shape[1] != self.dim:
            raise ValueError(f"queries have dim {queries.shape[1]} but the gallery has dim {self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if self.size >= 2**32:
            raise ValueError(f"galleries of 2^32 rows or more are not supported, got {self.size}")
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
        if q == 1 and n <= _FIRST_BLOCK_SCORES:
            found = _one_query_topk(queries[0] @ self.columns[:, start:stop], k, start)
            if found is not None:
                return found
        b = block_rows(q, n, k, self.block_bytes)
        buffer = np.empty((q, b), np.float32)
        top = RunningTopK(q, k)
        # Blocks grow from max(4 k, 64, 65536 / Q) rows, doubling up to b: small first blocks set every query's
        # threshold cheaply, and each later block then holds about k candidates per query, most blocks none.
        lo, width = start, min(b, max(_FIRST_BLOCK_FACTOR * k, _FIRST_BLOCK_MIN, _FIRST_BLOCK_SCORES // q))
        while lo < stop:
            hi = min(lo + width, stop)
            scores = buffer[:, : hi - lo]
            # One block of cosine scores: (Q, D) @ (D, b) -> (Q, b).
            np.matmul(queries, self.columns[:, lo:hi], out=scores)
            top.update(scores, lo)
            lo, width = hi, min(2 * width, b)
        return top.result()


def _one_query_topk(scores: np.ndarray, k: int, offset: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Top k of one query's (n,) scores in a few NumPy calls (a small gallery's latency is these calls), or None
    when the k-th score is tied beyond the top k, which the general path resolves by index."""
    n = scores.size
    top = np.argpartition(scores, n - k)[n - k:] if n > k else np.arange(n)
    values = scores[top]
    if n > k and np.count_nonzero(scores >= values.min()) != k:
        return None
    order = np.lexsort((top, -values))  # score descending, then index ascending
    return values[order][None], (top[order] + offset)[None].astype(np.int64)


def exact_topk(queries: np.ndarray, gallery: np.ndarray, k: int, *, block_bytes: int = DEFAULT_BLOCK_BYTES,
               rows: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One-off exact search of float32 (Q, D) queries in a float32 (N, D) gallery; see `ExactIndex.search`.

    Builds the dimension-major copy each call: keep an `ExactIndex` to search the same gallery repeatedly.
    """
    return ExactIndex(gallery, block_bytes=block_bytes).search(queries, k, rows=rows)


_LOW32 = np.int64(0xFFFFFFFF)
# Score dtypes `_pack` keeps exact: float32 cosines, and the agreement counts of binary codes.
_SCORE_DTYPES = (np.dtype(np.float32), np.dtype(np.uint8), np.dtype(np.uint16))
_NO_KEY = np.iinfo(np.int64).min


def _pack(scores: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One int64 key per (score, index) that orders like (score descending, index ascending) when larger is better.

    Float32 scores: the high 32 bits map the score to an int32 of the same order (negative floats get their
    magnitude bits flipped). Unsigned integer scores of at most 16 bits (Hamming agreements): the high bits are the
    score itself. The low 32 bits hold 2^32 - 1 - index, so on equal scores the lower index has the larger key.
    Exact for every finite score and every index < 2^32.
    """
    if scores.dtype == np.float32:
        bits = (scores + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0, which compare equal
        ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
    else:
        ordered = scores.astype(np.int64)
    return (ordered << 32) | (_LOW32 - indices)


def _unpack(keys: np.ndarray, dtype: np.dtype | type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `_pack` for scores of `dtype`: (scores, indices int64)."""
    if dtype == np.float32:
        ordered = (keys >> 32).astype(np.int32)
        scores = (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(np.float32)
    else:
        scores = (keys >> 32).astype(dtype)
    return scores, _LOW32 - (keys & _LOW32)


class RunningTopK:
    """The best k (score, index) pairs of each of q queries seen so far, kept as packed int64 keys (`_pack`).

    Scores are float32 (cosines) or uint8 / uint16 (agreeing bits of binary codes). Candidates (entries above
    their query's threshold) are collected over blocks and merged into the kept keys when more than `flush_at`
    (default max(q k, 4096)) are pending, or at the end; thresholds are updated at each merge.
    """

    def __init__(self, q: int, k: int, dtype: np.dtype | type = np.float32, flush_at: int | None = None):
        self.k, self.dtype = k, np.dtype(dtype)
        if self.dtype not in _SCORE_DTYPES:
            raise ValueError(f"scores must be float32, uint8 or uint16, got {self.dtype}")
        self.keys = np.full((q, k), _NO_KEY, np.int64)  # (q, k) unordered
        # (q,) the k-th best score so far, in the scores' own dtype (no conversion pass over a block); only read
        # once `filled`.
        self.threshold = np.zeros(q, self.dtype)
        self.filled, self.busy = False, True
        self._masks = np.empty(0, bool)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        # Merge once more candidates than this are pending (0: after every block, which keeps the thresholds tight).
        self.n_pending, self.flush_at = 0, max(q * k, _MIN_FLUSH) if flush_at is None else int(flush_at)

    def update(self, scores: np.ndarray, offset: int) -> None:
        """Take the candidates of a (q, b) block of scores whose column j is gallery row offset + j."""
        k, (q, b) = self.k, scores.shape
        if self.filled and self.busy:
            # Most queries gained candidates in the last block: compare every entry at once (no row maxima pass).
            mask = np.greater(scores, self.threshold[:, None], out=self._mask(q, b))
            flat = np.flatnonzero(mask)  # positions in the block, query-major
            self.busy = flat.size * _HOT_SHARE >= q  # still a candidate per _HOT_SHARE queries or more: stay busy
        elif self.filled:
            # One cheap pass: only queries whose block maximum beats their threshold can gain candidates.
            hot = np.flatnonzero(scores.max(axis=1) > self.threshold)
            self.busy = hot.size * 2 >= q
            if hot.size == 0:
                return
            # Candidates beat their query's threshold; a later equal score loses the tie to the kept lower index.
            if hot.size * _HOT_SHARE < q:  # few hot queries: compare their rows only
                h, row = np.nonzero(scores[hot] > self.threshold[hot, None])
                flat = hot[h] * b + row
            else:
                mask = np.greater(scores, self.threshold[:, None], out=self._mask(q, b))
                flat = np.flatnonzero(mask)  # positions in the block, query-major
        else:
            # First block: each query's top k of it (every entry tied with its k-th value kept: ties stay exact).
            kth = np.partition(scores, b - k, axis=1)[:, b - k] if b > k else scores.min(axis=1)
            flat = np.flatnonzero(scores >= kth[:, None])
            if flat.size == q * k:  # no ties at any k-th value (the usual case): these are the top k
                self.keys[:] = _pack(scores.ravel()[flat], flat % b + offset).reshape(q, k)
                self.threshold[:] = kth
                self.filled = True
                return
        query, row = np.divmod(flat, b)
        values = scores.ravel()[flat]
        limit = max(_PARTITION_FACTOR * k, b // _PARTITION_SHARE)
        if self.filled and b > k and flat.size > limit:
            crowded = np.flatnonzero(np.bincount(query, minlength=q) > limit)
            if crowded.size:
                # Cut each crowded query to its top k of this block (with every entry tied to its k-th value):
                # one partition of its row instead of packing and merging all its candidates.
                kth = np.full(q, -np.inf if self.dtype.kind == "f" else 0, self.dtype)  # lowest: keeps all
                kth[crowded] = np.partition(scores[crowded], b - k, axis=1)[:, b - k]
                keep = values >= kth[query]
                query, row, values = query[keep], row[keep], values[keep]
        self.pending.append((query, row + offset, values))
        self.n_pending += query.size
        if not self.filled or self.n_pending > self.flush_at:
            self._merge()

    def _mask(self, q: int, b: int) -> np.ndarray:
        """A reused (q, b) boolean buffer."""
        if self._masks.size < q * b:
            self._masks = np.empty(q * b, bool)
        return self._masks[: q * b].reshape(q, b)

    def _merge(self) -> None:
        """Merge the pending candidates into each query's top k and update the thresholds."""
        if not self.pending:
            return
        k = self.k
        query, index, values = (np.concatenate(parts) for parts in zip(*self.pending, strict=True))
        self.pending, self.n_pending = [], 0
        order = np.argsort(query, kind="stable")
        query, index, values = query[order], index[order], values[order]
        counts = np.bincount(query, minlength=self.keys.shape[0])
        rows = np.flatnonzero(counts)  # the queries that have candidates (r,)
        local = (np.cumsum(counts > 0) - 1)[query]
        per_row = counts[rows]
        # Dense (r, k + most candidates) keys: each query's kept k, then its candidates, padded with _NO_KEY.
        dense = np.full((rows.size, k + int(per_row.max(initial=0))), _NO_KEY, np.int64)
        dense[:, :k] = self.keys[rows]
        starts = np.cumsum(per_row) - per_row
        dense[local, k + np.arange(query.size) - starts[local]] = _pack(values, index)
        width = dense.shape[1]
        best = np.partition(dense, width - k, axis=1)[:, width - k:]  # (r, k) largest keys, unordered
        self.keys[rows] = best
        self.threshold[rows] = _unpack(best.min(axis=1), self.dtype)[0]
        self.filled = True

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores float32 (q, k), indices int64 (q, k)), each row by descending score, ties by ascending index."""
        self._merge()
        return _unpack(np.sort(self.keys, axis=1)[:, ::-1], self.dtype)


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
        gallery = _check_2d("gallery", gallery)
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
        queries = _check_2d("queries", queries)
        k = min(int(k), self.index.ntotal)
        scores, indices = self.index.search(np.ascontiguousarray(queries), k)
        return scores.astype(np.float32), indices.astype(np.int64)
