"""Check a hand-derived gradient against central finite differences.

For a formula f returning `(value, grads)`, draw a random upstream gradient g shaped like the value (a seeded
normal draw), so that every output entry matters with its own weight, and compare, for each argument p,

    analytic:  the vector-Jacobian product g . df/dp  (grads[p] scaled by g, or f(..., grad_out=g) for arrays)
    numeric:   d/dp of phi = sum(g * f(...)), by central differences (phi(p + h e) - phi(p - h e)) / 2h per entry

with the relative error ||analytic - numeric|| / max(||analytic||, ||numeric||, floor). Run it in float64; for a
formula with kinks (|.|, sorting) choose inputs at least a few steps away from every kink.
"""

from __future__ import annotations

import numpy as np

from rebalance_ref.tolerances import FD_FLOOR, FD_STEP

__all__ = ["relative_error", "numeric_gradient", "analytic_vjp", "gradient_errors"]


def relative_error(analytic, numeric, floor: float = FD_FLOOR) -> float:
    """||analytic - numeric|| / max(||analytic||, ||numeric||, floor) (Frobenius norms; scalars allowed)."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"analytic and numeric: expected the same shape, got {a.shape} and {n.shape}")
    scale = max(float(np.linalg.norm(a)), float(np.linalg.norm(n)), floor)
    return float(np.linalg.norm(a - n)) / scale


def numeric_gradient(phi, inputs: dict, name: str, step: float = FD_STEP):
    """Central-difference gradient of the scalar function phi(**inputs) with respect to inputs[name] (an array or
    a Python number), leaving `inputs` unchanged. Returns an array of its shape, or a float for a number."""
    if name not in inputs:
        raise ValueError(f"name: expected one of {sorted(inputs)}, got {name!r}")
    base = inputs[name]
    is_number = np.ndim(base) == 0
    point = np.array(base, dtype=np.float64)  # a copy we may perturb
    grad = np.zeros_like(point)
    flat_point, flat_grad = point.reshape(-1), grad.reshape(-1)
    for k in range(flat_point.size):
        saved = flat_point[k]
        values = []
        for sign in (1.0, -1.0):
            flat_point[k] = saved + sign * step
            trial = float(point) if is_number else point.copy()
            values.append(float(phi(**{**inputs, name: trial})))
        flat_point[k] = saved
        flat_grad[k] = (values[0] - values[1]) / (2.0 * step)
    return float(grad) if is_number else grad


def analytic_vjp(fn, inputs: dict, seed: int = 0):
    """fn's value, a seeded random upstream gradient g shaped like it (a float for a scalar value), and fn's
    gradients contracted with g: g * grads for a scalar value, fn(..., grad_out=g) for an array value.
    Returns (value, g, {name: gradient})."""
    value, grads = fn(**inputs)
    rng = np.random.default_rng(seed)
    if np.ndim(value) == 0:
        g = float(rng.standard_normal())
        return value, g, {k: g * np.asarray(v) for k, v in grads.items()}
    g = rng.standard_normal(np.shape(value))
    return value, g, fn(**inputs, grad_out=g)[1]


def gradient_errors(fn, inputs: dict, wrt=None, *, seed: int = 0, step: float = FD_STEP) -> dict[str, float]:
    """Relative error between fn's analytic gradients and central differences, per argument.

    fn(**inputs) returns (value, grads) as every rebalance_ref formula does; for an array value fn must accept
    `grad_out`. `wrt` lists the argument names to check (default: every gradient fn returns). Returns {name: error}.
    """
    _, g, analytic = analytic_vjp(fn, inputs, seed)

    def phi(**kw):
        return np.sum(g * fn(**kw)[0])

    names = list(analytic) if wrt is None else list(wrt)
    missing = [k for k in names if k not in analytic]
    if missing:
        raise ValueError(f"wrt: expected names among the gradients {sorted(analytic)}, got {missing}")
    return {k: relative_error(analytic[k], numeric_gradient(phi, inputs, k, step)) for k in names}
