"""LIMoE's routing-entropy losses: gradients against finite differences, values against a loop over the
definition, the hinge of the global term, and clear errors."""

import math

import numpy as np
import pytest

from rebalance_ref import experts
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, ORACLE_RTOL

TOKENS = (1, 3, 7, 16)


def router_logits(tokens, n_experts=5, seed=0, spread=2.0):
    return spread * np.random.default_rng(seed).standard_normal((tokens, n_experts))


def entropy(p):
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.mark.parametrize("tokens", TOKENS)
def test_local_entropy_gradients_and_value(tokens):
    z = router_logits(tokens, seed=tokens)
    errors = gradient_errors(experts.local_entropy, {"logits": z})
    assert errors["logits"] <= FD_REL_TOL, errors
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = sum(entropy(row) for row in p) / tokens
    assert experts.local_entropy(z)[0] == pytest.approx(expected, rel=ORACLE_RTOL)


@pytest.mark.parametrize("tokens", TOKENS)
def test_global_entropy_gradients_where_the_hinge_is_active(tokens):
    z = router_logits(tokens, seed=tokens + 20, spread=4.0)
    p_bar = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).mean(axis=0)
    threshold = entropy(p_bar) + 0.3  # active, well away from the kink
    value, _ = experts.global_entropy(z, threshold)
    assert value == pytest.approx(0.3, rel=ORACLE_RTOL)
    errors = gradient_errors(experts.global_entropy, {"logits": z, "threshold": threshold}, wrt=["logits"])
    assert errors["logits"] <= FD_REL_TOL, errors


def test_global_entropy_is_zero_once_spread_enough():
    z = router_logits(7, seed=1, spread=0.1)  # nearly uniform over 5 experts: entropy close to log 5
    value, grads = experts.global_entropy(z, math.log(3))
    assert value == 0.0 and not np.any(grads["logits"])
    collapsed = np.tile([8.0, 0, 0, 0, 0], (7, 1))  # every token on expert 0
    value, grads = experts.global_entropy(collapsed, math.log(3))
    assert value > 1.0 and np.any(grads["logits"])
    assert grads["logits"][:, 0].sum() > 0  # descending moves weight off the crowded expert


def test_local_entropy_of_confident_routing_is_small():
    confident = np.tile([20.0, 0, 0, 0], (4, 1))
    assert experts.local_entropy(confident)[0] < 1e-6
    assert experts.local_entropy(np.zeros((4, 4)))[0] == pytest.approx(math.log(4), rel=ORACLE_RTOL)


@pytest.mark.parametrize("fn, kwargs, message", [
    (experts.local_entropy, {"logits": np.zeros((3, 1))}, "logits: expected E >= 2 experts"),
    (experts.local_entropy, {"logits": np.zeros(3)}, "logits: expected a 2-D array"),
    (experts.global_entropy, {"logits": np.zeros((3, 4)), "threshold": -1.0}, "threshold: expected an entropy"),
    (experts.global_entropy, {"logits": np.full((3, 4), np.nan), "threshold": 1.0}, "logits: expected finite"),
])
def test_bad_input(fn, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fn(**kwargs)
