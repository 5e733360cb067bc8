import re

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from rebalance_ref import distances
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, IDENTITY_RTOL, KINK_GAP, KINKED_FD_STEP, ORACLE_RTOL

BATCHES = (2, 3, 7, 16)
PAIRWISE = ("mae", "mse", "cumsum_l1")


# --- kinks, computed here from the definitions (independently of the code under test) ------------------------------


def pair_kink_gap(name, x, y):
    """How far (x, y) is from the nearest kink of the distance: |x - y| for mae, |cumsum difference| for
    cumsum_l1; mse has none."""
    if name == "mae":
        return float(np.min(np.abs(x - y)))
    if name == "cumsum_l1":
        return float(np.min(np.abs(np.cumsum(x.ravel()) - np.cumsum(y.ravel()))))
    return np.inf


def wasserstein_kink_gap(x, y, w, weights_vary=True):
    """How far a row-wise W1 is from its kinks: the smallest gap between two merged support values of a row (where
    two atoms would swap), and, when the weights are differentiated too, the smallest |F_mu - F_nu| on an interval
    between them (where a sign would flip). An interval whose left part holds both atoms of every index j it holds
    one of (x_rj with y_rj) has F_mu - F_nu = 0 for *every* weight vector, so it is no kink and is skipped."""
    smallest = np.inf
    m = x.shape[1]
    for xr, yr, wr in zip(x, y, w, strict=True):
        both = np.concatenate([xr, yr])
        order = np.argsort(both, kind="stable")
        s = both[order]
        smallest = min(smallest, np.min(np.diff(s)))
        if weights_vary:
            seen = np.cumsum(np.eye(m)[order % m], axis=0)[:-1]  # (2M-1, M): atoms of index j up to each interval
            paired = np.all(seen != 1, axis=1)
            cdf_gap = ((xr[None, :] <= s[:-1, None]) @ wr - (yr[None, :] <= s[:-1, None]) @ wr) / wr.sum()
            if not np.all(paired):
                smallest = min(smallest, np.min(np.abs(cdf_gap[~paired])))
    return float(smallest)


def kink_free(draw, gap, seed):
    """The first draw(rng) whose gap(*draw) exceeds KINK_GAP, over seeded attempts (deterministic)."""
    for attempt in range(200):
        sample = draw(np.random.default_rng([seed, attempt]))
        if gap(*sample) > KINK_GAP:
            return sample
    raise AssertionError("no kink-free sample in 200 draws")


def pair_inputs(name, shape, seed):
    return kink_free(
        lambda rng: (rng.standard_normal(shape), rng.standard_normal(shape)),
        lambda x, y: pair_kink_gap(name, x, y),
        seed,
    )


def wasserstein_inputs(batch, m, seed):
    return kink_free(
        lambda rng: (rng.standard_normal((batch, m)), rng.standard_normal((batch, m)), rng.uniform(0.1, 1, (batch, m))),
        wasserstein_kink_gap,
        seed,
    )


def bad_cases():
    x = np.ones((3, 4))
    nan = x.copy()
    nan[0, 1] = np.nan
    negative = x.copy()
    negative[2, 0] = -0.5
    zero_row = x.copy()
    zero_row[1] = 0.0
    return [
        ("mae", {"x": x, "y": x[:, :3]}, "x and y: expected the same shape, got (3, 4) and (3, 3)"),
        ("mse", {"x": nan, "y": x}, "x: expected finite values"),
        ("cumsum_l1", {"x": x, "y": np.ones((0, 4))}, "y: expected a non-empty array"),
        ("wasserstein", {"x": x[0], "y": x[0], "weights": x[0]}, "x: expected a 2-D array of shape (B, M)"),
        ("wasserstein", {"x": x, "y": x, "weights": x[:2]}, "x and weights: expected the same shape"),
        ("wasserstein", {"x": x, "y": nan, "weights": x}, "y: expected finite values"),
        ("wasserstein", {"x": x, "y": x, "weights": negative}, "weights: expected non-negative weights"),
        ("wasserstein", {"x": x, "y": x, "weights": zero_row}, "weights: expected a positive sum in every row"),
    ]


# --- values ----------------------------------------------------------------------------------------------------------


def test_pairwise_values_match_loops():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 5)), rng.standard_normal((3, 5))
    flat_x, flat_y = x.ravel(), y.ravel()
    n = flat_x.size
    assert distances.mae(x, y)[0] == pytest.approx(
        sum(abs(a - b) for a, b in zip(flat_x, flat_y, strict=True)) / n, rel=ORACLE_RTOL
    )
    assert distances.mse(x, y)[0] == pytest.approx(
        sum((a - b) ** 2 for a, b in zip(flat_x, flat_y, strict=True)) / n, rel=ORACLE_RTOL
    )
    loop = sum(abs(sum(flat_x[: k + 1]) - sum(flat_y[: k + 1])) for k in range(n)) / n
    assert distances.cumsum_l1(x, y)[0] == pytest.approx(loop, rel=ORACLE_RTOL)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("m", (1, 4, 9))
def test_wasserstein_matches_scipy_row_by_row(batch, m):
    rng = np.random.default_rng(batch * 10 + m)
    x, y = rng.standard_normal((batch, m)), rng.standard_normal((batch, m))
    w = rng.uniform(0, 1, (batch, m))
    w[:, 0] += 0.1  # keep every row's sum positive; other weights may be tiny
    expected = np.mean([wasserstein_distance(x[r], y[r], w[r], w[r]) for r in range(batch)])
    assert distances.wasserstein(x, y, w)[0] == pytest.approx(expected, rel=ORACLE_RTOL)


def test_wasserstein_with_ties_and_zero_weights_matches_scipy():
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((4, 8)), 1)  # many repeated values, within and across x and y
    y = np.round(rng.standard_normal((4, 8)), 1)
    y[:, :3] = x[:, :3]
    w = rng.uniform(0, 1, (4, 8))
    w[:, 5] = 0.0  # an atom that carries no mass (as the official diagonal with D_ii = 0)
    expected = np.mean([wasserstein_distance(x[r], y[r], w[r], w[r]) for r in range(4)])
    assert distances.wasserstein(x, y, w)[0] == pytest.approx(expected, rel=ORACLE_RTOL)


def test_wasserstein_ignores_weight_scale_and_point_masses_give_abs():
    rng = np.random.default_rng(4)
    x, y, w = rng.standard_normal((3, 5)), rng.standard_normal((3, 5)), rng.uniform(0.1, 1, (3, 5))
    scaled = w * np.array([[2.0], [0.5], [7.0]])
    assert distances.wasserstein(x, y, scaled)[0] == pytest.approx(distances.wasserstein(x, y, w)[0], rel=IDENTITY_RTOL)
    single = distances.wasserstein(x[:, :1], y[:, :1], w[:, :1])[0]
    assert single == pytest.approx(np.mean(np.abs(x[:, 0] - y[:, 0])), rel=IDENTITY_RTOL)


# --- gradients ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("shape", [(2,), (6,), (42,), (3, 5)])
def test_pairwise_gradients_match_finite_differences(name, shape):
    x, y = pair_inputs(name, shape, seed=len(shape) * 100 + shape[0])
    errors = gradient_errors(getattr(distances, name), {"x": x, "y": y}, seed=7, step=KINKED_FD_STEP)
    assert max(errors.values()) < FD_REL_TOL, errors


@pytest.mark.parametrize("batch", BATCHES)
def test_wasserstein_gradients_match_finite_differences(batch):
    x, y, w = wasserstein_inputs(batch, 5, seed=batch)
    errors = gradient_errors(distances.wasserstein, {"x": x, "y": y, "weights": w}, seed=7, step=KINKED_FD_STEP)
    assert max(errors.values()) < FD_REL_TOL, errors


def test_mae_gradient_is_sign_over_n():
    _, grads = distances.mae(np.array([1.0, 0.0, 2.0, 5.0]), np.array([0.0, 3.0, 2.0, 1.0]))
    np.testing.assert_array_equal(grads["x"], [0.25, -0.25, 0.0, 0.25])  # sign(0) = 0 at the tie
    np.testing.assert_array_equal(grads["y"], -grads["x"])


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_names_the_argument(name, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(distances, name)(**kwargs)
