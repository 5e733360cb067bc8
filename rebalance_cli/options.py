"""Options shared by several commands, and the one place that sets thread counts."""

from __future__ import annotations

import sys

import click

from exports.threads import set_blas_threads


def set_threads(n: int) -> None:
    """Use exactly `n` threads in NumPy's BLAS (already loaded or not) and, if it is imported, in torch.

    Measured on the project's 2-core machines: with a busy neighbour, 2 threads per process ran 3-20x slower
    than 1, so every command takes `--threads` and defaults to 1. Environment variables alone do not reach a BLAS
    that NumPy has already loaded, so `exports.threads.set_blas_threads` also calls OpenBLAS's own setter.
    """
    if n < 1:
        raise click.BadParameter(f"--threads must be >= 1, got {n}")
    set_blas_threads(n)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(n)


threads_option = click.option(
    "--threads", type=int, default=1, show_default=True, help="Threads for torch/BLAS in this process."
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
