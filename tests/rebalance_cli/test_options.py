import click
import pytest

from exports.threads import blas_threads
from rebalance_cli.options import set_threads


def test_set_threads_reaches_loaded_blas_and_torch():
    import torch

    before_torch = torch.get_num_threads()
    before_blas = blas_threads()
    try:
        set_threads(1)
        assert torch.get_num_threads() == 1
        if before_blas is not None:  # an OpenBLAS is loaded: its own counter must follow
            assert blas_threads() == 1
    finally:
        torch.set_num_threads(before_torch)


def test_set_threads_rejects_zero():
    with pytest.raises(click.BadParameter, match="--threads"):
        set_threads(0)
