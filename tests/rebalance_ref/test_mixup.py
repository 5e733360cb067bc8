import numpy as np
import pytest

from rebalance_ref import mixup
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, IDENTITY_RTOL, ORACLE_RTOL, SLERP_MIN_ANGLE
from tests.rebalance_ref.test_losses import image_ids

BATCHES = (2, 3, 7)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def pair_inputs(batch, seed=0):
    rng = np.random.default_rng(seed + 200)
    return rng.standard_normal((batch, 5)), rng.standard_normal((batch, 5))


def near_pair(batch, angle, seed=0):
    """Rows a and b at about `angle` radians from each other (b = a plus a small orthogonal step)."""
    rng = np.random.default_rng(seed + 300)
    a = unit(rng.standard_normal((batch, 5)))
    step = rng.standard_normal((batch, 5))
    step = unit(step - np.sum(step * a, axis=1, keepdims=True) * a)
    return 1.5 * a, 0.8 * (a + angle * step)


def m2_by_definition(v, t, lam, tau, idx=None):
    """The loss as the method writes it, row by row, with the slerp formula written out."""
    v, t = unit(v), unit(t)
    ids = np.arange(len(v)) if idx is None else np.asarray(idx)
    theta = np.arccos(np.sum(v * t, axis=1))
    m = (np.sin(lam * theta) / np.sin(theta))[:, None] * v + (np.sin((1 - lam) * theta) / np.sin(theta))[:, None] * t
    total = 0.0
    for anchor in (v, t):
        for i in range(len(v)):
            positive = np.exp(anchor[i] @ (t[i] if anchor is v else v[i]) / tau)
            negatives = sum(np.exp(anchor[i] @ m[j] / tau) for j in range(len(v)) if ids[j] != ids[i])
            total -= np.log(positive / (positive + negatives))
    return total / len(v)


def test_slerp_walks_the_great_circle():
    a, b = pair_inputs(6, seed=1)
    u, w = unit(a), unit(b)
    theta = np.arccos(np.sum(u * w, axis=1))
    for lam in (0.0, 0.3, 1.0):
        m, _ = mixup.slerp(a, b, lam)
        np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, rtol=ORACLE_RTOL)
        # the angle to n(b) is lam θ, and to n(a) the rest of θ
        np.testing.assert_allclose(np.sum(m * w, axis=1), np.cos(lam * theta), atol=ORACLE_RTOL)
        np.testing.assert_allclose(np.sum(m * u, axis=1), np.cos((1 - lam) * theta), atol=ORACLE_RTOL)
    np.testing.assert_allclose(mixup.slerp(a, b, 1.0)[0], u, rtol=IDENTITY_RTOL, atol=IDENTITY_RTOL)
    np.testing.assert_allclose(mixup.slerp(a, b, 0.0)[0], w, rtol=IDENTITY_RTOL, atol=IDENTITY_RTOL)


@pytest.mark.parametrize("angle", [1.0, 1e-3, 1e-6])
def test_slerp_gradients_match_finite_differences_on_both_branches(angle):
    a, b = near_pair(5, angle) if angle < 1 else pair_inputs(5)
    errors = gradient_errors(mixup.slerp, {"a": a, "b": b, "lam": 0.3}, seed=11)
    assert max(errors.values()) <= FD_REL_TOL, errors


def test_slerp_is_continuous_and_finite_at_the_small_angle_switch():
    below = near_pair(4, 0.9 * SLERP_MIN_ANGLE, seed=2)
    above = near_pair(4, 1.1 * SLERP_MIN_ANGLE, seed=2)
    g = np.random.default_rng(5).standard_normal((4, 5))
    m_below, g_below = mixup.slerp(*below, 0.4, grad_out=g)
    m_above, g_above = mixup.slerp(*above, 0.4, grad_out=g)
    # the rows move by 0.2 SLERP_MIN_ANGLE between the two points: the value and the gradient change by that order,
    # with no jump from the switch of formula
    np.testing.assert_allclose(m_below, m_above, atol=SLERP_MIN_ANGLE)
    np.testing.assert_allclose(g_below["a"], g_above["a"], atol=10 * SLERP_MIN_ANGLE)
    for a, b in ((below[0], below[0]), (below[0], -below[0])):  # identical and antipodal rows
        m, grads = mixup.slerp(a, b, 0.4, grad_out=g)
        assert np.all(np.isfinite(m)) and all(np.all(np.isfinite(x)) for x in grads.values())


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
def test_m2_mix_gradients_match_finite_differences(batch, repeated):
    v, t = pair_inputs(batch, seed=batch)
    inputs = {"v": v, "t": t, "lam": 0.35, "tau": 0.3, "idx": image_ids(batch, repeated, batch)}
    errors = gradient_errors(mixup.m2_mix, inputs, seed=batch + 3)
    assert set(errors) == {"v", "t", "tau"}
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("repeated", [False, True])
def test_m2_mix_equals_its_definition(repeated):
    v, t = pair_inputs(7, seed=4)
    idx = image_ids(7, repeated, 4)
    value, _ = mixup.m2_mix(v, t, 0.6, 0.2, idx)
    assert value == pytest.approx(m2_by_definition(v, t, 0.6, 0.2, idx), rel=ORACLE_RTOL)


def test_bad_lam_is_refused():
    v, t = pair_inputs(3)
    with pytest.raises(ValueError, match=r"lam: expected a mixing weight in \[0, 1\], got 1.5"):
        mixup.m2_mix(v, t, 1.5, 0.1)
    with pytest.raises(ValueError, match="a and b: expected the same shape"):
        mixup.slerp(v, t[:, :3], 0.5)
