import numpy as np
import pytest

from exports.serving.search import ExactIndex, block_rows, exact_topk, faiss_available


def _stable_topk(queries, gallery, k):
    """Oracle: full score matrix, stable sort of each row by descending score (ties: lower index first)."""
    scores = queries.astype(np.float64) @ gallery.astype(np.float64).T
    order = np.stack([np.lexsort((np.arange(gallery.shape[0]), -row)) for row in scores])[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize(("q", "n", "d", "k", "block_bytes"), [
    (3, 1000, 16, 5, 4096),      # many blocks, crowded first block
    (7, 513, 8, 10, 256),        # blocks smaller than 16 k, a ragged last block
    (1, 50, 4, 50, 64),          # k == N
    (1, 400, 4, 7, 1 << 20),     # one query, small gallery: the few-call path, tied k-th scores fall back
    (1, 3000, 32, 5, 1 << 20),   # one query, hardly any ties: the few-call path answers
    (4, 2000, 8, 3, 1 << 20),    # one block
    (2, 300, 8, 7, 1 << 10),     # blocks of 128 rows
    (40, 3000, 8, 5, 48000),     # many queries, blocks of 300 rows: pending merges, hot-row subsets
    (64, 5000, 8, 7, 1 << 20),   # growing blocks
])
def test_exact_topk_matches_a_stable_sort_with_ties(q, n, d, k, block_bytes):
    rng = np.random.default_rng(n + q)
    # Small integer coordinates: exact float32 products and many tied scores.
    gallery = rng.integers(-2, 3, size=(n, d)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(q, d)).astype(np.float32)
    scores, indices = exact_topk(queries, gallery, k, block_bytes=block_bytes)
    want_scores, want_indices = _stable_topk(queries, gallery, k)
    assert scores.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, want_indices)
    np.testing.assert_array_equal(scores, want_scores.astype(np.float32))


def test_sorted_gallery_worst_case_and_row_slices():
    # Scores rise along the gallery, so every block beats the threshold: the crowded (partition) path.
    d, n = 4, 5000
    gallery = np.zeros((n, d), np.float32)
    gallery[:, 0] = np.linspace(-1, 1, n, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0], [-1, 0, 0, 0]], np.float32)
    index = ExactIndex(gallery, block_bytes=512)
    _, indices = index.search(queries, 4)
    np.testing.assert_array_equal(indices, [[n - 1, n - 2, n - 3, n - 4], [0, 1, 2, 3]])
    _, part = index.search(queries, 3, rows=slice(100, 200))
    np.testing.assert_array_equal(part, [[199, 198, 197], [100, 101, 102]])


def test_k_larger_than_gallery_and_empty_inputs():
    gallery = np.eye(3, dtype=np.float32)
    scores, indices = exact_topk(np.eye(3, dtype=np.float32)[:1], gallery, 10)
    assert indices.tolist() == [[0, 1, 2]] and scores.tolist() == [[1.0, 0.0, 0.0]]
    scores, indices = exact_topk(np.zeros((0, 3), np.float32), gallery, 2)
    assert scores.shape == (0, 2) and indices.shape == (0, 2)


@pytest.mark.parametrize(("queries", "gallery", "k", "match"), [
    (np.zeros((1, 3), np.int64), np.zeros((4, 3), np.float32), 1, "queries must be a floating-point array"),
    (np.zeros((1, 3), np.float32), np.zeros((4, 3), np.bool_), 1, "embeddings must be a floating-point array"),
    (np.zeros(3, np.float32), np.zeros((4, 3), np.float32), 1, "queries must be a 2-D array"),
    (np.zeros((1, 2), np.float32), np.zeros((4, 3), np.float32), 1, "dim 2 but the gallery has dim 3"),
    (np.zeros((1, 3), np.float32), np.zeros((4, 3), np.float32), 0, "k must be a positive integer"),
    (np.full((1, 3), np.nan, np.float32), np.zeros((4, 3), np.float32), 1, "NaN"),
])
def test_bad_input_is_named(queries, gallery, k, match):
    with pytest.raises(ValueError, match=match):
        exact_topk(queries, gallery, k)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, np.longdouble])
def test_any_float_dtype_searches_as_float32(dtype):
    rng = np.random.default_rng(3)
    gallery, queries = rng.normal(size=(50, 8)), rng.normal(size=(4, 8))
    want = exact_topk(queries.astype(np.float32), gallery.astype(np.float32), 5)
    got = exact_topk(queries.astype(dtype), gallery.astype(dtype), 5)
    cast = exact_topk(queries.astype(dtype).astype(np.float32), gallery.astype(dtype).astype(np.float32), 5)
    np.testing.assert_array_equal(got[1], cast[1])  # the same search as converting first
    assert got[0].dtype == np.float32 and (dtype == np.float16 or np.array_equal(got[1], want[1]))


def test_block_rows_bounds_memory():
    assert block_rows(256, 10**6, 10, 1 << 20) == 1024
    assert block_rows(1, 10**6, 10, 1 << 20) == 262144
    assert block_rows(1, 100, 10, 1 << 20) == 100
    assert block_rows(10**6, 10**6, 10, 1 << 20) == 10  # never fewer rows than k


def test_faiss_backend_agrees_when_installed():
    if not faiss_available():
        # Without faiss the backend must refuse with a clear message rather than fail later.
        from exports.serving.search import FaissFlatIndex

        with pytest.raises(ValueError, match="faiss"):
            FaissFlatIndex(np.zeros((4, 3), np.float32))
        return
    from exports.serving.search import FaissFlatIndex

    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((500, 16)).astype(np.float32)
    queries = rng.standard_normal((5, 16)).astype(np.float32)
    _, want = exact_topk(queries, gallery, 5)
    _, got = FaissFlatIndex(gallery).search(queries, 5)
    np.testing.assert_array_equal(got, want)
