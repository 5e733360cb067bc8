"""Options shared by several commands, and the one place that sets thread counts."""

from __future__ import annotations

import os
import sys

import click


def set_threads(n: int) -> None:
    """Use exactly `n` threads for BLAS/OpenMP and, if it is imported or importable, for torch.

    Measured on the project's 2-core machines: with a busy neighbour, 2 threads per process ran 3-20x slower
    than 1, so every command takes `--threads` and defaults to 1.
    """
    if n < 1:
        raise click.BadParameter(f"--threads must be >= 1, got {n}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        torch.set_num_threads(n)


threads_option = click.option(
    "--threads", type=int, default=1, show_default=True, help="Threads for torch/BLAS in this process."
)
seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
