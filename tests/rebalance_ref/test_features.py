import warnings

import numpy as np
import pytest

from rebalance_ref.features import check_teacher_features
from rebalance_ref.files import DataError
from rebalance_ref.relations import normalize
from rebalance_ref.tolerances import NORM_EPS


def _features(n=8, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_ordinary_features_pass_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_teacher_features(_features())
        check_teacher_features(_features() * np.float32(1e15))  # large, but squares fit in float32


def test_all_zero_teacher_features_are_refused():
    with pytest.raises(DataError, match="t.npy: all 8 rows are zero"):
        check_teacher_features(np.zeros((8, 5), np.float32), where="t.npy")


def test_features_scaled_by_1e30_are_refused_with_the_row_count():
    big = _features() * np.float32(1e30)
    # what the trainer would get: n(x) of an infinite norm is 0, so every relation would be 0
    with np.errstate(over="ignore"):
        assert np.abs(normalize(big)[0]).max() == 0
    with pytest.raises(DataError, match=r"t.npy: 8 row\(s\) \(first: row 0\) of 8 .*overflow float32"):
        check_teacher_features(big, where="t.npy")


def test_features_scaled_by_1e_minus_40_are_refused_as_underflowing():
    small = _features() * np.float32(1e-40)
    assert np.linalg.norm(small, axis=1).max() <= NORM_EPS  # the squares underflow in float32
    with pytest.raises(DataError, match="t.npy: no row of 8 can be normalised .*8 with norms at most"):
        check_teacher_features(small, where="t.npy")


def test_rows_all_pointing_the_same_way_are_refused_as_zero_variance():
    row = _features(1)
    scaled = row * np.arange(1, 9, dtype=np.float32)[:, None]  # distinct rows, one direction
    with pytest.raises(DataError, match="all 8 usable rows point the same way"):
        check_teacher_features(scaled)
    varied = scaled.copy()
    varied[3, 0] += 0.1  # one row turned a little: relations now differ
    check_teacher_features(varied)


def test_some_rows_that_cannot_be_normalised_are_warned_about_with_count_and_first_row():
    x = _features()
    x[5] = 0
    x[6] = np.float32(1e-41)
    with pytest.warns(UserWarning, match=r"t.npy: 2 row\(s\) \(first: row 5\) of 8 cannot be normalised "
                                         r"\(1 zero, 1 with"):
        check_teacher_features(x, where="t.npy")


@pytest.mark.parametrize(("bad", "message"), [(np.full((3, 2), np.nan), "finite"), (np.ones(4), "2-D"),
                                               (np.zeros((0, 3)), "non-empty")])
def test_shape_and_finiteness_are_checked_too(bad, message):
    with pytest.raises(ValueError, match=message):
        check_teacher_features(bad)
