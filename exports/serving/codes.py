"""Binary codes: packing a hash head's outputs into bits, exact Hamming top-k, and exact re-ranking of a shortlist.

A code of `bits` bits is the sign pattern of `bits` real outputs (1 where the output is > 0). Codes are stored
packed, 8 bits a byte (`np.packbits`, first output in the highest bit of the first byte): uint8 (N, bits / 8),
i.e. `bits / 8` bytes an item, 32x less than the float32 embedding of the same width.

The Hamming distance of two codes is the number of bits where they differ: d(a, b) = popcount(a XOR b). For
codes read as ±1 vectors it is (bits − a·b) / 2, so the nearest codes are the largest inner products of the
sign vectors. `HammingIndex.search` is exact and deterministic: ascending distance, ties by lower gallery index.

How it is fast without compiled code of its own: the gallery is held as 64-bit words (32, 16 or 8 bits for codes
of other lengths), word-major (W, N), and stored *inverted*, so that one XOR and one `np.bitwise_count` give the
number of agreeing bits (bits − d) of a whole (q, b) block in two NumPy passes, as uint8 (uint16 past 255 bits).
The agreements then go through the same running top-k as the float search (`search.RunningTopK`, integer path),
merged often: agreements are small integers with many ties, and a stale threshold would let thousands of
candidates through.
"""

from __future__ import annotations

import numpy as np

from exports.serving.search import RunningTopK

# Gallery rows per block and queries per chunk: a (128, 4096) block of 64-bit XORs is 4 MiB and its agreements
# 512 KiB; blocks double from max(4 k, 256) rows. Chosen by `rebalance bench retrieval` (docs/export.md).
DEFAULT_BLOCK_ROWS, DEFAULT_QUERY_CHUNK = 4096, 128
_FIRST_BLOCK_FACTOR, _FIRST_BLOCK_MIN = 4, 256


def pack_codes(values: np.ndarray) -> np.ndarray:
    """Sign bits of real outputs, packed: float (N, bits) -> uint8 (N, bits / 8); bit = 1 where value > 0.

    `bits` must be a positive multiple of 8. NaN outputs are refused (their sign is undefined)."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] == 0 or values.shape[1] % 8:
        raise ValueError(f"codes need a 2-D array (items, bits) with bits a positive multiple of 8, "
                         f"got shape {values.shape}")
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"codes are made from real numbers, got {values.dtype}")
    if np.issubdtype(values.dtype, np.floating) and np.isnan(values).any():
        raise ValueError("cannot make codes from NaN outputs")
    return np.packbits(values > 0, axis=1)


def unpack_codes(packed: np.ndarray) -> np.ndarray:
    """The ±1 float32 (N, bits) vectors of packed codes (for inner products and tests)."""
    packed = check_codes("codes", packed)
    return np.unpackbits(packed, axis=1).astype(np.float32) * 2 - 1


def check_codes(name: str, packed: np.ndarray, n_bytes: int | None = None) -> np.ndarray:
    """`packed` as a uint8 (rows, bytes) array, with `n_bytes` bytes a row when given; anything else refused."""
    if not isinstance(packed, np.ndarray) or packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] == 0:
        raise ValueError(f"{name} must be packed codes, uint8 (rows, bits / 8), got "
                         f"{getattr(packed, 'dtype', type(packed).__name__)} {getattr(packed, 'shape', '')}")
    if n_bytes is not None and packed.shape[1] != n_bytes:
        raise ValueError(f"{name} have {8 * packed.shape[1]} bits but the gallery's codes have {8 * n_bytes}")
    return packed


def hamming_distances(queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """All Hamming distances, int32 (Q, N), of packed codes uint8 (Q, B) and (N, B) (small inputs, tests)."""
    queries = check_codes("queries", queries)
    codes = check_codes("codes", codes, queries.shape[1])
    return np.bitwise_count(queries[:, None, :] ^ codes[None, :, :]).sum(axis=2, dtype=np.int32)


def _word_dtype(n_bytes: int) -> np.dtype:
    """The widest unsigned word (64, 32, 16 or 8 bits) that divides a code of `n_bytes` bytes: no padding."""
    for size in (8, 4, 2):
        if n_bytes % size == 0:
            return np.dtype(f"uint{8 * size}")
    return np.dtype(np.uint8)


def _words(packed: np.ndarray) -> np.ndarray:
    """Packed codes (N, B) as words, word-major (W, N)."""
    return np.ascontiguousarray(packed.view(_word_dtype(packed.shape[1])).T)  # (W, N)


class HammingIndex:
    """Exact Hamming top-k over a gallery of N packed codes of `bits` bits.

    Memory: the gallery's own bytes (bits / 8 an item), plus one (q, b) block of words while searching.
    Queries go in chunks of `query_chunk`; each chunk is compared with blocks of up to `block_rows` gallery rows
    in two NumPy calls per 64-bit word (a broadcast XOR, then `bitwise_count`).
    """

    def __init__(self, codes: np.ndarray, *, block_rows: int = DEFAULT_BLOCK_ROWS,
                 query_chunk: int = DEFAULT_QUERY_CHUNK):
        codes = check_codes("codes", np.ascontiguousarray(codes))
        self.n_bytes = codes.shape[1]
        self.inverted = ~_words(codes)  # (W, N): popcount(query XOR inverted) = agreeing bits
        self.block_rows, self.query_chunk = int(block_rows), int(query_chunk)
        self._dtype = np.uint8 if self.bits <= 255 else np.uint16

    @property
    def bits(self) -> int:
        return 8 * self.n_bytes

    @property
    def size(self) -> int:
        return self.inverted.shape[1]

    @property
    def bytes_per_item(self) -> int:
        return self.n_bytes

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k gallery codes nearest to each packed query code.

        queries: uint8 (Q, bits / 8). Returns (distances int32 (Q, k'), indices int64 (Q, k')), k' = min(k, N),
        each row by ascending distance, ties by ascending index.
        """
        queries = check_codes("queries", np.ascontiguousarray(queries), self.n_bytes)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        n, q = self.size, queries.shape[0]
        k = min(int(k), n)
        distances, indices = np.zeros((q, k), np.int32), np.zeros((q, k), np.int64)
        if k == 0 or q == 0:
            return distances, indices
        words = _words(queries)  # (W, Q)
        for s in range(0, q, self.query_chunk):
            agreements, indices[s:s + self.query_chunk] = self._search_chunk(words[:, s:s + self.query_chunk], k)
            distances[s:s + self.query_chunk] = self.bits - agreements.astype(np.int32)
        return distances, indices

    def _search_chunk(self, words: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(agreements (q, k), indices (q, k)) of the query words (W, q) over the whole gallery."""
        n, (n_words, q) = self.size, words.shape
        b = min(max(self.block_rows, k), n)
        xor, count = np.empty((q, b), self.inverted.dtype), np.empty((q, b), np.uint8)
        agree = np.empty((q, b), self._dtype)
        top = RunningTopK(q, k, self._dtype, flush_at=q)  # integer ties: stale thresholds let many through
        # Blocks double from max(4 k, 256) rows up to b: a short first block sets every query's threshold cheaply
        # (a partition of each row), and each later block then holds about k candidates per query, so none is
        # crowded (agreements are small integers: a loose threshold would let thousands through).
        lo, width = 0, min(b, max(_FIRST_BLOCK_FACTOR * k, _FIRST_BLOCK_MIN))
        while lo < n:
            hi = min(lo + width, n)
            a = agree[:, : hi - lo]
            for w in range(n_words):
                self._agreements(words[w], w, lo, hi, xor[:, : hi - lo], a if w == 0 else count[:, : hi - lo])
                if w:
                    np.add(a, count[:, : hi - lo], out=a, casting="unsafe")
            top.update(a, lo)
            lo, width = hi, min(2 * width, b)
        return top.result()

    def _agreements(self, words: np.ndarray, w: int, lo: int, hi: int, xor: np.ndarray, out: np.ndarray) -> None:
        """Agreeing bits of word w of the queries (q,) with gallery rows lo:hi: popcount(query XOR NOT gallery)."""
        np.bitwise_xor(words[:, None], self.inverted[w, None, lo:hi], out=xor)  # (q, 1) ^ (1, b) -> (q, b)
        np.bitwise_count(xor, out=out, casting="unsafe")


def rerank_exact(queries: np.ndarray, embeddings: np.ndarray, shortlist: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine re-ranking of each query's shortlist: its k best rows of the shortlist by float inner product.

    queries float32 (Q, D), embeddings float32 (N, D) unit rows, shortlist int64 (Q, m) gallery rows (e.g. the
    Hamming top m). Returns (scores float32 (Q, k'), indices int64 (Q, k')), k' = min(k, m), by descending score,
    ties by lower gallery index.
    """
    if shortlist.ndim != 2 or shortlist.shape[0] != queries.shape[0]:
        raise ValueError(f"shortlist must be (queries, m), got {shortlist.shape} for {queries.shape[0]} queries")
    # Scores of each query with its own shortlist: (Q, 1, D) x (Q, m, D) -> (Q, m).
    scores = np.einsum("qd,qmd->qm", queries.astype(np.float32), embeddings[shortlist])
    k = min(int(k), shortlist.shape[1])
    order = np.lexsort((shortlist, -scores), axis=1)[:, :k]  # score descending, then index ascending
    return np.take_along_axis(scores, order, 1), np.take_along_axis(shortlist, order, 1)
