import re

import numpy as np
import pytest

from rebalance_ref import relations
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, NORM_EPS, ORACLE_RTOL

BATCHES = (2, 3, 7, 16)


def features(batch, dim=4, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, dim))


# Bad input -> (function name, kwargs, words the ValueError must contain). Shared with the torch mirror's tests,
# which check that both packages raise the same message.
def bad_cases():
    x = features(3)
    r = np.arange(9.0).reshape(3, 3)
    nan = x.copy()
    nan[1, 2] = np.nan
    inf_r = r.copy()
    inf_r[0, 0] = np.inf
    return [
        ("normalize", {"x": x[0]}, "x: expected a 2-D array"),
        ("cosine_relation", {"x": x[0], "tau": 0.1}, "x: expected a 2-D array"),
        ("cosine_relation", {"x": x[:1], "tau": 0.1}, "x: expected at least 2 rows"),
        ("cosine_relation", {"x": nan, "tau": 0.1}, "x: expected finite values"),
        ("cosine_relation", {"x": x, "tau": 0.0}, "tau: expected a positive scalar"),
        ("cosine_relation", {"x": x, "tau": np.ones(2)}, "tau: expected a real scalar"),
        ("cosine_relation", {"x": x, "tau": np.nan}, "tau: expected a finite scalar"),
        ("offdiag", {"r": x}, "r: expected a square (B, B) matrix"),
        ("offdiag", {"r": r[:1, :1]}, "r: expected at least 2 rows"),
        ("offdiag", {"r": inf_r}, "r: expected finite values"),
        ("fuse_teachers", {"r_text": r, "r_image": r[:2, :2], "lam": 0.5}, "r_text and r_image: expected the same"),
        ("fuse_teachers", {"r_text": r, "r_image": r, "lam": np.inf}, "lam: expected a finite scalar"),
        ("fuse_teachers", {"r_text": r[0], "r_image": r, "lam": 0.5}, "r_text: expected a 2-D array"),
    ]


@pytest.mark.parametrize("batch", BATCHES)
def test_cosine_relation_is_scaled_cosine(batch):
    x = features(batch, seed=batch)
    s, _ = relations.cosine_relation(x, 0.25)
    norms = np.linalg.norm(x, axis=1)
    for i in range(batch):
        for j in range(batch):
            assert s[i, j] == pytest.approx(x[i] @ x[j] / (norms[i] * norms[j]) / 0.25, rel=ORACLE_RTOL)


@pytest.mark.parametrize("batch", BATCHES)
def test_gradients_match_finite_differences(batch):
    x = features(batch, seed=batch)
    r_text, r_image = features(batch, batch, seed=1), features(batch, batch, seed=2)
    cases = [
        (relations.normalize, {"x": x}),
        (relations.cosine_relation, {"x": x, "tau": 0.3}),
        (relations.offdiag, {"r": r_text}),
        (relations.fuse_teachers, {"r_text": r_text, "r_image": r_image, "lam": 0.3}),
    ]
    for fn, inputs in cases:
        errors = gradient_errors(fn, inputs, seed=100 + batch)
        assert max(errors.values()) < FD_REL_TOL, (fn.__name__, errors)


def test_default_upstream_is_gradient_of_sum():
    x = features(5)
    _, ones = relations.cosine_relation(x, 0.2)
    _, explicit = relations.cosine_relation(x, 0.2, grad_out=np.ones((5, 5)))
    np.testing.assert_array_equal(ones["x"], explicit["x"])
    assert ones["tau"] == explicit["tau"]
    with pytest.raises(ValueError, match="grad_out and the value: expected the same shape"):
        relations.cosine_relation(x, 0.2, grad_out=np.ones((5, 4)))


def test_offdiag_is_row_major_and_scatters_back():
    r = np.arange(9.0).reshape(3, 3)
    out, grads = relations.offdiag(r, grad_out=np.arange(1.0, 7.0))
    np.testing.assert_array_equal(out, [1, 2, 3, 5, 6, 7])
    np.testing.assert_array_equal(grads["r"], [[0, 1, 2], [3, 0, 4], [5, 6, 0]])


def test_fuse_teachers_lam_weights_text():
    r_text, r_image = np.full((2, 2), 3.0), np.full((2, 2), 1.0)
    e, grads = relations.fuse_teachers(r_text, r_image, 0.75)
    np.testing.assert_allclose(e, 2.5)
    assert grads["lam"] == pytest.approx(4 * (3.0 - 1.0))
    e_out, _ = relations.fuse_teachers(r_text, r_image, 1.5)  # unconstrained lam extrapolates
    np.testing.assert_allclose(e_out, 4.0)


def test_normalize_rows_and_tiny_norm():
    x = features(3)
    x[1] = 0.0
    x[2] = NORM_EPS / 4
    u, grads = relations.normalize(x, grad_out=np.ones_like(x))
    assert np.linalg.norm(u[0]) == pytest.approx(1.0)
    np.testing.assert_array_equal(u[1], 0.0)
    np.testing.assert_allclose(u[2], 0.25)  # below eps the row is divided by eps, not by its norm
    np.testing.assert_allclose(grads["x"][1:], 1.0 / NORM_EPS)  # where the map is x / eps, linear


def test_integer_input_is_promoted_and_float32_kept():
    s64, _ = relations.cosine_relation(np.array([[1, 0], [1, 1]]), 1.0)
    assert s64.dtype == np.float64
    assert s64[0, 1] == pytest.approx(1 / np.sqrt(2))
    s32, _ = relations.cosine_relation(features(3).astype(np.float32), 1.0)
    assert s32.dtype == np.float32


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_names_the_argument(name, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(relations, name)(**kwargs)
