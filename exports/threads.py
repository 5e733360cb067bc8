"""Thread counts for NumPy's BLAS at run time (numpy + ctypes only, no torch, no threadpoolctl).

Environment variables such as `OPENBLAS_NUM_THREADS` only count if they are set before NumPy loads its BLAS; a
retriever embedded in a larger program cannot rely on that, so `set_blas_threads` calls OpenBLAS's own setter on
every OpenBLAS library already loaded in this process. The similarity products of `exports.search` run in BLAS,
so this is what `Retriever(threads=...)` and `rebalance bench retrieval --threads` use.
"""

from __future__ import annotations

import ctypes
import os
import re

import numpy as np  # noqa: F401  (imported so that NumPy's BLAS is loaded before we look for it)

# OpenBLAS builds name their setter differently: plain, 64-bit-integer suffix, or scipy-openblas prefix.
_SETTERS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads", "openblas_set_num_threads64_",
            "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads", "openblas_get_num_threads64_",
            "openblas_get_num_threads")


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS shared libraries mapped into this process (Linux); empty elsewhere."""
    try:
        with open("/proc/self/maps") as handle:
            maps = handle.read()
    except OSError:
        return []
    return sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps)))


def _call_first(library: ctypes.CDLL, names: tuple[str, ...], *args: int) -> int | None:
    for name in names:
        function = getattr(library, name, None)
        if function is not None:
            return function(*args)
    return None


def set_blas_threads(n: int) -> bool:
    """Use `n` threads in NumPy's BLAS from now on; returns False when no OpenBLAS setter was found.

    The environment variables are set as well, for a BLAS that is loaded later.
    """
    if int(n) < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(int(n))
    done = False
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        if _call_first(library, _SETTERS, int(n)) is not None:
            done = True
    return done


def blas_threads() -> int | None:
    """The thread count of the first loaded OpenBLAS, or None when it cannot be read."""
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        value = _call_first(library, _GETTERS)
        if value is not None:
            return int(value)
    return None
