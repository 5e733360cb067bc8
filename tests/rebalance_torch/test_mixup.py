import numpy as np
import pytest
import torch

from rebalance_ref import mixup as ref
from rebalance_ref.tolerances import SLERP_MIN_ANGLE
from rebalance_torch import mixup
from tests.rebalance_ref.test_losses import image_ids
from tests.rebalance_ref.test_mixup import BATCHES, near_pair, pair_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
def test_m2_mix_parity(batch, repeated):
    v, t = pair_inputs(batch, seed=batch)
    inputs = {"v": v, "t": t, "lam": 0.35, "tau": 0.3, "idx": image_ids(batch, repeated, batch)}
    assert assert_parity(ref.m2_mix, mixup.m2_mix, inputs, seed=batch) == {"v", "t", "tau"}


@pytest.mark.parametrize("angle", [1.0, 10 * SLERP_MIN_ANGLE, 0.1 * SLERP_MIN_ANGLE, 0.0])
def test_slerp_parity_on_both_branches_and_at_identical_rows(angle):
    a, b = pair_inputs(5) if angle == 1.0 else near_pair(5, angle)
    assert assert_parity(ref.slerp, mixup.slerp, {"a": a, "b": b, "lam": 0.3}, seed=4) == {"a", "b"}


def test_slerp_backward_is_finite_at_identical_and_antipodal_rows():
    a = torch.tensor(pair_inputs(4)[0], requires_grad=True)
    for b in (a.detach().clone(), -a.detach().clone()):
        mixup.slerp(a, b, 0.4).sum().backward()
        assert torch.isfinite(a.grad).all()
        a.grad = None


def test_gradcheck():
    v, t = pair_inputs(3, seed=8)
    assert_gradcheck(mixup.m2_mix, {"v": v, "t": t, "lam": 0.5, "tau": 0.2, "idx": np.array([1, 1, 2])},
                     ["v", "t", "tau"])


@pytest.mark.parametrize(("name", "kwargs", "message"), [
    ("m2_mix", {"v": pair_inputs(3)[0], "t": pair_inputs(3)[1], "lam": -0.1, "tau": 0.1}, "lam: expected a mixing"),
    ("slerp", {"a": pair_inputs(3)[0], "b": pair_inputs(2)[1], "lam": 0.5}, "a and b: expected the same shape"),
])
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, mixup, name, kwargs, message)
