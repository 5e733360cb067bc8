import numpy as np
import pytest
import torch

from rebalance_ref import sae as ref
from rebalance_ref.gradcheck import analytic_vjp, relative_error
from rebalance_ref.tolerances import KINKED_FD_STEP, ORACLE_RTOL, PARITY32_ATOL, PARITY32_RTOL
from rebalance_torch import sae
from tests.rebalance_ref.test_sae import PARAMS, bad_cases, sae_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_same_error, to_torch

# Parity in float64: both sides run the same arithmetic in a different order, so the relative error of the value
# and of every gradient stays at rounding level; ORACLE_RTOL (1e-10) is the bound asked of them here.


def _torch_grads(inputs, upstream=None):
    tensors = {k: to_torch(v, requires_grad=k != "k") for k, v in inputs.items()}
    if "x" in inputs:
        out = sae.sae_activations(**tensors)
        (out * torch.as_tensor(upstream)).sum().backward()
    else:
        out = sae.sae_loss(**tensors)
        out.backward()
    return out.detach().numpy(), {k: t.grad.numpy() for k, t in tensors.items() if k != "k"}


@pytest.mark.parametrize("seed", (0, 1))
@pytest.mark.parametrize("k", (1, 3, 8))
def test_loss_parity_float64(seed, k):
    inputs = sae_inputs(k=k, seed=seed)
    value, grads = ref.sae_loss(**inputs)
    got, auto = _torch_grads(inputs)
    assert relative_error(got, value) <= ORACLE_RTOL
    assert set(grads) == {"v", "t", *PARAMS}
    for name, g in grads.items():
        assert relative_error(auto[name], g) <= ORACLE_RTOL, name


def test_activations_parity_float64():
    inputs = sae_inputs(n=7, d=5, h=10, k=4, seed=9)
    args = {"x": inputs["v"], "w_enc": inputs["w_enc"], "k": 4}
    value, upstream, grads = analytic_vjp(ref.sae_activations, args, seed=1)
    got, auto = _torch_grads(args, upstream)
    assert relative_error(got, value) <= ORACLE_RTOL
    for name in ("x", "w_enc"):
        assert relative_error(auto[name], grads[name]) <= ORACLE_RTOL, name


def test_loss_gradcheck():
    inputs = sae_inputs(k=3, seed=2)
    assert_gradcheck(sae.sae_loss, inputs, ["v", "t", *PARAMS], eps=KINKED_FD_STEP)


def test_float32_matches_float64_reference():
    inputs = sae_inputs(n=32, d=16, h=64, k=8, seed=3, gap=10 * PARITY32_ATOL)
    value, grads = ref.sae_loss(**inputs)
    tensors = {k: to_torch(v, requires_grad=k != "k", dtype=torch.float32) for k, v in inputs.items()}
    loss = sae.sae_loss(**tensors)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=PARITY32_RTOL)
    np.testing.assert_allclose(tensors["w_enc"].grad.numpy(), grads["w_enc"], rtol=PARITY32_RTOL,
                               atol=PARITY32_ATOL)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, sae, name, kwargs, message)
