import numpy as np
import pytest
import torch

from rebalance_ref import hashing as ref
from rebalance_ref.tolerances import KINKED_FD_STEP, PARITY32_ATOL, PARITY32_RTOL
from rebalance_torch import hashing
from tests.rebalance_ref.test_hashing import LOSS_ARRAYS, bad_cases, head_params, loss_inputs, unit
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error, to_torch


@pytest.mark.parametrize("seed", (0, 1))
def test_head_parity_float64(seed):
    rng = np.random.default_rng(seed)
    inputs = {"z": unit(rng.standard_normal((6, 5))), **head_params(rng, 5, 16), "alpha": 2.0}
    assert assert_parity(ref.hash_head, hashing.hash_head, inputs) == {"z", "w", "w_gate", "b_gate", "alpha"}


def test_target_parity_float64():
    rng = np.random.default_rng(3)
    inputs = {"v": rng.standard_normal((7, 4)), "t": rng.standard_normal((7, 4)), "beta": 0.3, "eta": 0.4,
              "mu": 1.1}
    assert assert_parity(ref.code_target, hashing.code_target, inputs) == {"v", "t"}


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("idx", (None, np.array([0, 0, 1, 2, 2, 2])))
def test_loss_parity_float64(seed, idx):
    inputs = loss_inputs(seed=seed, idx=idx)
    inputs["weights"] = {"contrast": 0.8, "intra": 0.3, "quant": 0.5, "balance": 0.7}
    assert assert_parity(ref.hash_loss, hashing.hash_loss, inputs) == {*LOSS_ARRAYS, "alpha", "tau"}


def test_loss_gradcheck():
    inputs = loss_inputs(seed=2, b=4, d=3, bits=8)
    assert_gradcheck(hashing.hash_loss, inputs, ["v", "t", "w_i", "w_gate_i", "b_gate_t"], eps=KINKED_FD_STEP)


def test_float32_matches_float64_reference():
    inputs = loss_inputs(seed=4, b=32, d=16, bits=32, gap=10 * PARITY32_ATOL)
    value, grads = ref.hash_loss(**inputs)
    tensors = {k: to_torch(v, requires_grad=k in LOSS_ARRAYS, dtype=torch.float32) for k, v in inputs.items()}
    loss = hashing.hash_loss(**tensors)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=PARITY32_RTOL)
    np.testing.assert_allclose(tensors["w_i"].grad.numpy(), grads["w_i"], rtol=PARITY32_RTOL, atol=PARITY32_ATOL)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, hashing, name, kwargs, message)
