import pytest

from rebalance_ref.threads import blas_threads, set_threads, thread_report


def test_set_threads_reaches_the_loaded_blas_and_torch():
    import torch

    before_torch, before_blas = torch.get_num_threads(), blas_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        assert blas_threads() in (None, 1)  # None only where NumPy has no separate BLAS pool
        set_threads(2)
        assert torch.get_num_threads() == 2
        assert blas_threads() in (None, 2)
    finally:
        set_threads(before_blas or 1)
        torch.set_num_threads(before_torch)


def test_thread_report_lists_every_pool_with_its_count():
    set_threads(1)
    report = thread_report()
    assert all({"library", "api", "threads"} <= set(row) for row in report)
    assert all(row["threads"] == 1 for row in report)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_thread_count_that_is_not_a_positive_integer_is_refused(bad):
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        set_threads(bad)
