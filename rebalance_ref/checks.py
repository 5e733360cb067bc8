"""Input checks shared by the NumPy reference and its torch mirror (private to the two packages).

Every check reads only `.shape`, `.ndim` and element-wise comparisons, and tests finiteness with the object's
own `isfinite` when it has one (a torch tensor) or with NumPy otherwise, so the same function validates a NumPy
array and a torch tensor without importing torch. Both packages therefore raise the same `ValueError`, with the
same words, for the same bad input: the argument's name first, then what was expected, then what came.
"""

from __future__ import annotations

import numbers

import numpy as np

DISTANCES = ("mae", "mse", "cumsum_l1", "wasserstein")
WEIGHT_NAMES = ("kd", "kdi", "kdt")
# What the official code calls our distances (for a friendlier error message only; not accepted as names).
_OFFICIAL_ALIASES = {"kl": "cumsum_l1", "wd": "wasserstein", "no": "mse"}


def as_float_array(name: str, x) -> np.ndarray:
    """`x` as a NumPy array of a floating dtype (float64 unless it already is floating)."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # e.g. a torch tensor that requires grad
        raise ValueError(f"{name}: expected a numeric array, got {type(x).__name__} ({exc})") from None
    if arr.dtype.kind == "f":
        return arr
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
    return arr.astype(np.float64)


def _shape(x) -> tuple[int, ...]:
    return tuple(int(n) for n in x.shape)


def finite(name: str, x) -> None:
    """Raise unless every entry of `x` (array or tensor) is finite."""
    ok = x.isfinite().all() if hasattr(x, "isfinite") else np.isfinite(x).all()
    if not bool(ok):
        raise ValueError(f"{name}: expected finite values, got NaN or Inf")


def array(name: str, x, ndim: int, layout: str, min_rows: int = 1) -> None:
    """Raise unless `x` has rank `ndim` (layout like "(B, D)" names the axes), at least `min_rows` rows, and
    only finite entries."""
    if not hasattr(x, "shape") or not hasattr(x, "ndim"):
        raise ValueError(f"{name}: expected an array of shape {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array of shape {layout}, got shape {_shape(x)}")
    if any(n == 0 for n in _shape(x)):
        raise ValueError(f"{name}: expected a non-empty array of shape {layout}, got shape {_shape(x)}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name}: expected at least {min_rows} rows (a relation needs pairs), got shape {_shape(x)}")
    finite(name, x)


def nonempty(name: str, x) -> None:
    """Raise unless `x` is a non-empty array (any shape) of finite values."""
    if not hasattr(x, "shape"):
        raise ValueError(f"{name}: expected an array, got {type(x).__name__}")
    if any(n == 0 for n in _shape(x)):
        raise ValueError(f"{name}: expected a non-empty array, got shape {_shape(x)}")
    finite(name, x)


def same_rows(name_a: str, a, name_b: str, b) -> None:
    """Raise unless `a` and `b` hold the same batch size (first axis)."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b}: expected the same batch size, got {int(a.shape[0])} and {int(b.shape[0])}"
        )


def same_shape(name_a: str, a, name_b: str, b) -> None:
    """Raise unless `a` and `b` have the same shape."""
    if _shape(a) != _shape(b):
        raise ValueError(f"{name_a} and {name_b}: expected the same shape, got {_shape(a)} and {_shape(b)}")


def square(name: str, r, min_rows: int = 2) -> None:
    """Raise unless `r` is a finite (B, B) matrix with B >= min_rows."""
    array(name, r, 2, "(B, B)", min_rows=min_rows)
    if r.shape[0] != r.shape[1]:
        raise ValueError(f"{name}: expected a square (B, B) matrix, got shape {_shape(r)}")


def scalar(name: str, value, positive: bool = False) -> float:
    """Raise unless `value` is a finite real scalar (a Python number, a 0-d array or a 0-d tensor), and, with
    `positive`, greater than 0. Returns it as a Python float (the tensor itself is left to the caller)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        out = float(value)
    elif hasattr(value, "ndim") and value.ndim == 0 and getattr(value, "dtype", None) is not None:
        out = float(value.detach() if hasattr(value, "detach") else value)
    else:
        what = f"shape {_shape(value)}" if hasattr(value, "shape") else type(value).__name__
        raise ValueError(f"{name}: expected a real scalar (a number or a 0-d array), got {what}")
    if not np.isfinite(out):
        raise ValueError(f"{name}: expected a finite scalar, got {out}")
    if positive and out <= 0:
        raise ValueError(f"{name}: expected a positive scalar, got {out}")
    return out


def _to_numpy(x) -> np.ndarray:
    """A NumPy view of a non-differentiable input (list, array or tensor on any device)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def idx(ids, batch: int) -> np.ndarray:
    """The image id of each of `batch` rows as int64; None means every row is its own image (arange)."""
    if ids is None:
        return np.arange(batch)
    arr = _to_numpy(ids)
    if arr.ndim != 1 or arr.shape[0] != batch:
        raise ValueError(f"idx: expected {batch} image ids (one per row, shape ({batch},)), got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        if arr.dtype.kind != "f" or not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"idx: expected integer image ids, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def labels(values, n: int) -> np.ndarray:
    """ITM labels: `n` integers in {0, 1} (1 = matching pair), as int64."""
    arr = _to_numpy(values)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"labels: expected {n} labels (one per row of logits, shape ({n},)), got shape {arr.shape}")
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError("labels: expected values in {0, 1} (0 = non-matching, 1 = matching pair)")
    return arr.astype(np.int64)


def distance(name) -> str:
    """Raise unless `name` is one of DISTANCES."""
    if name not in DISTANCES:
        hint = f" (the official '{name}' is '{_OFFICIAL_ALIASES[name]}')" if name in _OFFICIAL_ALIASES else ""
        raise ValueError(f"distance: expected one of {', '.join(map(repr, DISTANCES))}, got {name!r}{hint}")
    return name


def loss_weights(weights) -> dict[str, float]:
    """{"kd", "kdi", "kdt"} -> float; a missing key (or weights=None) means 1."""
    if weights is None:
        return dict.fromkeys(WEIGHT_NAMES, 1.0)
    if not hasattr(weights, "items"):
        raise ValueError(f"weights: expected a dict with keys among {WEIGHT_NAMES}, got {type(weights).__name__}")
    unknown = sorted(set(weights) - set(WEIGHT_NAMES))
    if unknown:
        raise ValueError(f"weights: expected keys among {WEIGHT_NAMES}, got unknown {unknown}")
    return {k: scalar(f"weights[{k!r}]", weights.get(k, 1.0)) for k in WEIGHT_NAMES}


def nonnegative_rows(name: str, w, layout: str) -> None:
    """Raise unless `w` holds no negative entry and every row has a positive sum."""
    if bool((w < 0).any()):
        raise ValueError(f"{name}: expected non-negative weights {layout}, got a negative entry")
    if bool((w.sum(1) <= 0).any()):
        raise ValueError(f"{name}: expected a positive sum in every row of {layout}, got a row summing to 0")


def row_weights(w, batch: int) -> None:
    """The (B, B) weights of the Wasserstein structure distance: finite, >= 0 off the diagonal, each row with a
    positive off-diagonal sum. The diagonal is never used (a D = 1 - t t^T computed in float32 may hold -1e-7
    there)."""
    array("row_weights", w, 2, "(B, B)")
    if _shape(w) != (batch, batch):
        raise ValueError(f"row_weights: expected shape ({batch}, {batch}) (B, B), got {_shape(w)}")
    off = _to_numpy(w)[~np.eye(batch, dtype=bool)].reshape(batch, batch - 1)
    nonnegative_rows("row_weights", off, "(B, B) off the diagonal")
