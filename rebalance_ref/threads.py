"""Thread counts, set in one place for every layer: BLAS, OpenMP and (when it is loaded) torch.

Environment variables such as `OPENBLAS_NUM_THREADS` only count if they are set before a library loads; a program
that embeds rebalance (a notebook, a server) has usually loaded NumPy long before. So `set_threads` asks
threadpoolctl to change the thread pools already loaded in this process — OpenBLAS, MKL, BLIS or Apple's
Accelerate, and the OpenMP runtimes — sets the environment variables for libraries loaded later, and, when torch
is already imported, calls `torch.set_num_threads` too. It never imports torch itself: this layer is NumPy-only.

Why the project defaults to one thread: measured on its 2-core machines with a busy neighbour, 2 threads per
process ran 3-20x slower than 1. Every command takes `--threads`, and `TrainConfig.threads` reaches this function
at the start of a run.
"""

from __future__ import annotations

import os
import sys

import numpy as np  # noqa: F401  (imported so that NumPy's BLAS is loaded, and limited, before anything runs)
from threadpoolctl import threadpool_info, threadpool_limits

# The environment variables that libraries loaded later read for their thread count.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                    "BLIS_NUM_THREADS")


def set_threads(n: int) -> None:
    """Use exactly `n` threads from now on in every BLAS and OpenMP pool of this process, in libraries loaded
    later (environment variables), and in torch when it is already imported."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be an integer >= 1, got {n!r}")
    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    threadpool_limits(limits=n)  # not used as a context manager: the limit stays
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(n)


def blas_threads() -> int | None:
    """The thread count of the first BLAS loaded in this process, or None when there is none."""
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return int(pool["num_threads"])
    return None


def thread_report() -> list[dict]:
    """Every thread pool loaded in this process: library, its API, version and current thread count."""
    return [{"library": pool.get("internal_api"), "api": pool.get("user_api"), "version": pool.get("version"),
             "threads": pool.get("num_threads"), "path": pool.get("filepath")} for pool in threadpool_info()]
