import numpy as np
import pytest

from rebalance_ref.gradcheck import analytic_vjp, gradient_errors, numeric_gradient, relative_error
from rebalance_ref.tolerances import FD_FLOOR, FD_REL_TOL


def cube_sum(x, c):
    """sum(c x^3) with its gradients, a smooth scalar formula."""
    return float(np.sum(c * x**3)), {"x": 3 * c * x**2, "c": float(np.sum(x**3))}


def cube_sum_wrong(x, c):
    value, grads = cube_sum(x, c)
    return value, {**grads, "x": 2 * c * x**2}  # a plausible derivation error


def outer(x, c, *, grad_out=None):
    """c x x^T (an array value) and its vector-Jacobian product."""
    g = np.ones((x.size, x.size)) if grad_out is None else grad_out
    return c * np.outer(x, x), {"x": c * (g + g.T) @ x, "c": float(np.sum(g * np.outer(x, x)))}


def test_relative_error():
    assert relative_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert relative_error([1.0, 0.0], [0.0, 1.0]) == pytest.approx(np.sqrt(2))
    assert relative_error(0.0, 1e-12) == pytest.approx(1e-12 / FD_FLOOR)  # tiny gradients compare absolutely
    with pytest.raises(ValueError, match="analytic and numeric: expected the same shape"):
        relative_error(np.ones(2), np.ones(3))


def test_numeric_gradient_of_array_and_number_leaves_inputs_alone():
    x = np.array([0.5, -1.0, 2.0])
    inputs = {"x": x, "c": 1.5}
    np.testing.assert_allclose(numeric_gradient(lambda x, c: cube_sum(x, c)[0], inputs, "x"), 4.5 * x**2, rtol=1e-8)
    assert numeric_gradient(lambda x, c: cube_sum(x, c)[0], inputs, "c") == pytest.approx(np.sum(x**3), rel=1e-8)
    np.testing.assert_array_equal(x, [0.5, -1.0, 2.0])
    assert inputs["c"] == 1.5
    with pytest.raises(ValueError, match="name: expected one of"):
        numeric_gradient(lambda x, c: 0.0, inputs, "y")


def test_gradient_errors_accepts_right_and_catches_wrong_gradients():
    inputs = {"x": np.random.default_rng(0).standard_normal((3, 2)), "c": 0.7}
    right = gradient_errors(cube_sum, inputs)
    assert set(right) == {"x", "c"}
    assert max(right.values()) < FD_REL_TOL
    wrong = gradient_errors(cube_sum_wrong, inputs)
    assert wrong["x"] > 0.1
    assert wrong["c"] < FD_REL_TOL


def test_gradient_errors_uses_a_random_upstream_for_array_values():
    inputs = {"x": np.random.default_rng(1).standard_normal(4), "c": -0.3}
    assert max(gradient_errors(outer, inputs, seed=3).values()) < FD_REL_TOL

    def outer_ignoring_upstream(x, c, *, grad_out=None):  # right only for an all-ones upstream
        return outer(x, c)

    assert gradient_errors(outer_ignoring_upstream, inputs, seed=3)["x"] > 0.1


def test_gradient_errors_wrt_subset_and_unknown():
    inputs = {"x": np.ones(2), "c": 2.0}
    assert set(gradient_errors(cube_sum, inputs, wrt=["c"])) == {"c"}
    with pytest.raises(ValueError, match="wrt: expected names among the gradients"):
        gradient_errors(cube_sum, inputs, wrt=["y"])


def test_analytic_vjp_contracts_with_the_upstream():
    x = np.array([1.0, -2.0])
    value, g, grads = analytic_vjp(cube_sum, {"x": x, "c": 2.0}, seed=5)
    assert isinstance(g, float) and value == pytest.approx(-14.0)
    np.testing.assert_allclose(grads["x"], g * 6 * x**2)
    value, g, grads = analytic_vjp(outer, {"x": x, "c": 2.0}, seed=5)
    assert g.shape == value.shape == (2, 2)
    np.testing.assert_allclose(grads["x"], 2.0 * (g + g.T) @ x)
