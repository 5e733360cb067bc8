import numpy as np
import pytest
import torch

from rebalance_ref import distances as ref
from rebalance_ref.tolerances import KINKED_FD_STEP, PARITY64_ATOL, PARITY64_RTOL
from rebalance_torch import distances
from tests.rebalance_ref.test_distances import BATCHES, PAIRWISE, bad_cases, pair_inputs, wasserstein_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error


@pytest.mark.parametrize("name", PAIRWISE)
@pytest.mark.parametrize("shape", [(2,), (42,), (3, 5)])
def test_pairwise_parity_and_gradcheck(name, shape):
    x, y = pair_inputs(name, shape, seed=shape[0])
    inputs = {"x": x, "y": y}
    assert assert_parity(getattr(ref, name), getattr(distances, name), inputs) == {"x", "y"}
    assert_gradcheck(getattr(distances, name), inputs, ["x", "y"], eps=KINKED_FD_STEP)


@pytest.mark.parametrize("batch", BATCHES)
def test_wasserstein_parity(batch):
    x, y, w = wasserstein_inputs(batch, 5, seed=batch)
    inputs = {"x": x, "y": y, "weights": w}
    assert assert_parity(ref.wasserstein, distances.wasserstein, inputs) == {"x", "y", "weights"}


@pytest.mark.parametrize("batch", (2, 7))
def test_wasserstein_gradcheck(batch):
    x, y, w = wasserstein_inputs(batch, 4, seed=batch)
    assert_gradcheck(distances.wasserstein, {"x": x, "y": y, "weights": w}, ["x", "y", "weights"], eps=KINKED_FD_STEP)


def test_wasserstein_value_with_ties_and_zero_weights():
    rng = np.random.default_rng(3)
    x, y = np.round(rng.standard_normal((4, 8)), 1), np.round(rng.standard_normal((4, 8)), 1)
    y[:, :3] = x[:, :3]
    w = rng.uniform(0, 1, (4, 8))
    w[:, 5] = 0.0
    value = distances.wasserstein(torch.tensor(x), torch.tensor(y), torch.tensor(w))
    assert value.item() == pytest.approx(ref.wasserstein(x, y, w)[0], rel=PARITY64_RTOL, abs=PARITY64_ATOL)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, distances, name, kwargs, message)
