"""Teacher features checked for meaning, not only for shape.

The structure teachers enter the losses only through cosine relations, r_ij = n(t_i) . n(t_j) with
n(x) = x / max(||x||, NORM_EPS), computed in float32 by the trainer. A feature file of the right shape can still
make every relation meaningless, and training then runs on as if the teacher were zero:

- a row whose float32 norm is at most NORM_EPS (all zeros, or entries so small, e.g. 1e-40, that their squares
  underflow) cannot be normalised: n(x) is nearly 0 and the row is "unrelated to everything";
- a row whose squared entries overflow float32 (e.g. entries of 1e30) has an infinite norm: n(x) is 0 or NaN;
- rows that all point the same way (zero variance across rows: every caption's feature identical up to a
  positive scale) make every relation 1, teaching nothing.

`check_teacher_features` refuses a file where no row is usable, any row overflows, or all usable rows point the
same way (DataError naming the file and counting the rows), and warns, with the count and the first row, when
only some rows cannot be normalised. A scale problem is cured by dividing the whole array by one constant, which
leaves every cosine unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np

from rebalance_ref import checks
from rebalance_ref.files import DataError
from rebalance_ref.tolerances import NORM_EPS, SAME_DIRECTION_ATOL


def _rows(mask: np.ndarray) -> str:
    """'k row(s) (first: row i)' for a boolean row mask with at least one True."""
    return f"{int(mask.sum())} row(s) (first: row {int(np.argmax(mask))})"


def check_teacher_features(features, where: str = "teacher features") -> None:
    """Raise DataError (or warn) unless the (N, D) `features` can carry cosine relations; see the module text.
    `where` names the source (e.g. "teacher features train_text.npy") at the start of every message."""
    x = checks.as_float_array(where, features)
    checks.array(where, x, 2, "(N, D)")
    x64 = x.astype(np.float64)
    # the true norm in float64, each row scaled by its largest entry first so that no square overflows
    peak = np.abs(x64).max(axis=1)
    norm64 = peak * np.linalg.norm(x64 / np.where(peak > 0, peak, 1.0)[:, None], axis=1)
    with np.errstate(over="ignore", under="ignore"):
        norm32 = np.linalg.norm(x.astype(np.float32), axis=1)  # what the trainer's float32 arithmetic gets
    zero = peak == 0
    tiny = ~zero & (norm32 <= NORM_EPS)  # non-zero, but the norm underflows or is below NORM_EPS
    huge = ~np.isfinite(norm32)
    n = x.shape[0]
    if zero.all():
        raise DataError(f"{where}: all {n} rows are zero; cosine relations need directions")
    if huge.any():
        raise DataError(f"{where}: {_rows(huge)} of {n} have norms up to {norm64[huge].max():.3g}, whose squares "
                        f"overflow float32 (cosine relations divide by norms); divide the array by a constant")
    if (zero | tiny).all():
        raise DataError(f"{where}: no row of {n} can be normalised ({int(zero.sum())} zero, {int(tiny.sum())} "
                        f"with norms at most {NORM_EPS:g} in float32, largest {norm64.max():.3g}); multiply the "
                        f"array by a constant")
    usable = ~(zero | tiny)
    units = x64[usable] / norm64[usable, None]
    if usable.sum() > 1 and np.ptp(units, axis=0).max() <= SAME_DIRECTION_ATOL:
        raise DataError(f"{where}: all {int(usable.sum())} usable rows point the same way (zero variance), so "
                        f"every cosine relation is 1 and teaches nothing")
    if not usable.all():
        warnings.warn(f"{where}: {_rows(~usable)} of {n} cannot be normalised ({int(zero.sum())} zero, "
                      f"{int(tiny.sum())} with float32 norms at most {NORM_EPS:g}); they will look unrelated to "
                      f"every other row", stacklevel=2)
