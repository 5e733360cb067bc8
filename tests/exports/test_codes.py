"""Binary codes: packing, exact Hamming top-k (against a brute-force stable sort) and shortlist re-ranking."""

import numpy as np
import pytest

from exports.serving.codes import HammingIndex, hamming_distances, pack_codes, rerank_exact, unpack_codes


def _brute_topk(queries: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Ascending distance, ties by lower index: a stable argsort of every distance row."""
    full = hamming_distances(queries, codes)
    order = np.argsort(full, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(full, order, 1), order


@pytest.mark.parametrize("bits", [8, 16, 24, 32, 64, 128, 136, 256, 264])
def test_hamming_topk_is_the_brute_force_order_for_every_word_size(bits):
    rng = np.random.default_rng(bits)
    # Few distinct codes: many exactly tied distances, so the tie rule (lower index first) is exercised.
    pool = rng.integers(0, 256, (40, bits // 8), dtype=np.uint8)
    codes = pool[rng.integers(0, 40, 1500)]
    queries = rng.integers(0, 256, (37, bits // 8), dtype=np.uint8)
    distances, indices = HammingIndex(codes, block_rows=97, query_chunk=8).search(queries, 12)
    want_d, want_i = _brute_topk(queries, codes, 12)
    np.testing.assert_array_equal(indices, want_i)
    np.testing.assert_array_equal(distances, want_d)
    assert distances.dtype == np.int32 and indices.dtype == np.int64


def test_hamming_is_half_the_gap_of_sign_inner_products():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((50, 64))
    codes = pack_codes(values)
    signs = unpack_codes(codes)
    np.testing.assert_array_equal(signs, np.where(values > 0, 1.0, -1.0))
    # d(a, b) = (bits - a . b) / 2 for ±1 vectors.
    np.testing.assert_array_equal(hamming_distances(codes, codes), ((64 - signs @ signs.T) / 2).astype(np.int32))


def test_small_gallery_and_large_k_return_every_item_once():
    codes = np.array([[0b1111_0000], [0b0000_0000], [0b1111_0000]], np.uint8)
    distances, indices = HammingIndex(codes).search(np.array([[0b1111_0001]], np.uint8), 10)
    assert indices.tolist() == [[0, 2, 1]] and distances.tolist() == [[1, 1, 5]]


def test_bad_codes_and_queries_are_refused_with_their_shape():
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_codes(np.zeros((3, 12)))
    with pytest.raises(ValueError, match="NaN"):
        pack_codes(np.full((1, 8), np.nan))
    with pytest.raises(ValueError, match="uint8"):
        HammingIndex(np.zeros((3, 8), np.float32))
    index = HammingIndex(np.zeros((3, 8), np.uint8))
    with pytest.raises(ValueError, match="have 32 bits but the gallery's codes have 64"):
        index.search(np.zeros((1, 4), np.uint8), 2)
    with pytest.raises(ValueError, match="positive integer"):
        index.search(np.zeros((1, 8), np.uint8), 0)


def test_rerank_orders_a_shortlist_by_exact_cosine_with_ties_by_index():
    embeddings = np.array([[1, 0], [0, 1], [0.6, 0.8], [1, 0]], np.float32)
    queries = np.array([[1, 0], [0, 1]], np.float32)
    scores, indices = rerank_exact(queries, embeddings, np.array([[3, 1, 0], [0, 2, 1]]), 2)
    assert indices.tolist() == [[0, 3], [1, 2]]
    np.testing.assert_allclose(scores, [[1, 1], [1, 0.8]], rtol=1e-6)


def test_the_running_top_k_takes_only_scores_it_orders_exactly():
    from exports.serving.search import RunningTopK

    for dtype in (np.float32, np.uint8, np.uint16):
        RunningTopK(2, 3, dtype)
    with pytest.raises(ValueError, match="float32, uint8 or uint16"):
        RunningTopK(2, 3, np.float64)
