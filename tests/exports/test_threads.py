import pytest

from exports.threads import blas_threads, set_blas_threads


def test_set_blas_threads_reaches_the_loaded_openblas():
    before = blas_threads()
    try:
        assert set_blas_threads(1) is True
        assert blas_threads() == 1
    finally:
        set_blas_threads(before or 1)


def test_zero_threads_is_refused():
    with pytest.raises(ValueError, match="threads must be >= 1"):
        set_blas_threads(0)
