import re

import numpy as np
import pytest
import torch

from rebalance_ref import relations as ref
from rebalance_ref.gradcheck import analytic_vjp
from rebalance_ref.tolerances import (
    GRADCHECK_ATOL,
    GRADCHECK_EPS,
    GRADCHECK_RTOL,
    PARITY32_ATOL,
    PARITY32_RTOL,
    PARITY64_ATOL,
    PARITY64_RTOL,
)
from rebalance_torch import relations
from tests.rebalance_ref.test_relations import BATCHES, bad_cases, features

# --- helpers shared by the mirror's tests ----------------------------------------------------------------------------


def to_torch(value, requires_grad=False, dtype=torch.float64):
    """A NumPy array or a Python float as a tensor (integer arrays stay integer); anything else unchanged."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iub":
        return torch.as_tensor(value)
    if isinstance(value, (np.ndarray, float)):
        return torch.tensor(value, dtype=dtype, requires_grad=requires_grad)
    return value


def assert_parity(ref_fn, torch_fn, inputs, seed=0):
    """The NumPy reference and its torch mirror agree on the value and on the gradient of every argument the
    reference differentiates (torch by autograd through a random upstream gradient). Returns the names checked."""
    value, upstream, grads = analytic_vjp(ref_fn, inputs, seed)
    tensors = {k: to_torch(v, requires_grad=k in grads) for k, v in inputs.items()}
    out = torch_fn(**tensors)
    np.testing.assert_allclose(out.detach().numpy(), value, rtol=PARITY64_RTOL, atol=PARITY64_ATOL)
    (out * torch.as_tensor(upstream, dtype=torch.float64)).sum().backward()
    for name, grad in grads.items():
        np.testing.assert_allclose(
            tensors[name].grad.numpy(), grad, rtol=PARITY64_RTOL, atol=PARITY64_ATOL, err_msg=name
        )
    return set(grads)


def assert_gradcheck(torch_fn, inputs, differentiable, eps=GRADCHECK_EPS):
    """torch.autograd.gradcheck of torch_fn with respect to the named float64 inputs (every other input fixed)."""
    names = list(differentiable)
    tensors = {k: to_torch(v) for k, v in inputs.items()}
    leaves = tuple(to_torch(inputs[k], requires_grad=True) for k in names)

    def fn(*args):
        return torch_fn(**{**tensors, **dict(zip(names, args, strict=True))})

    assert torch.autograd.gradcheck(fn, leaves, eps=eps, atol=GRADCHECK_ATOL, rtol=GRADCHECK_RTOL)


def assert_same_error(ref_module, torch_module, name, kwargs, message):
    """Both packages raise ValueError with the same message for the same bad input."""
    with pytest.raises(ValueError, match=re.escape(message)) as ref_error:
        getattr(ref_module, name)(**kwargs)
    tensors = {k: to_torch(v) for k, v in kwargs.items()}
    with pytest.raises(ValueError) as torch_error:
        getattr(torch_module, name)(**tensors)
    assert str(torch_error.value) == str(ref_error.value)


# --- tests ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
def test_parity_with_reference(batch):
    x = features(batch, seed=batch)
    r_text, r_image = features(batch, batch, seed=1), features(batch, batch, seed=2)
    assert assert_parity(ref.normalize, relations.normalize, {"x": x}) == {"x"}
    assert assert_parity(ref.cosine_relation, relations.cosine_relation, {"x": x, "tau": 0.3}) == {"x", "tau"}
    assert assert_parity(ref.offdiag, relations.offdiag, {"r": r_text}) == {"r"}
    fuse = {"r_text": r_text, "r_image": r_image, "lam": 0.3}
    assert assert_parity(ref.fuse_teachers, relations.fuse_teachers, fuse) == {"r_text", "r_image", "lam"}


@pytest.mark.parametrize("batch", (2, 7))
def test_gradcheck(batch):
    x = features(batch, seed=batch)
    r_text, r_image = features(batch, batch, seed=1), features(batch, batch, seed=2)
    assert_gradcheck(relations.normalize, {"x": x}, ["x"])
    assert_gradcheck(relations.cosine_relation, {"x": x, "tau": 0.3}, ["x", "tau"])
    assert_gradcheck(relations.offdiag, {"r": r_text}, ["r"])
    assert_gradcheck(relations.fuse_teachers, {"r_text": r_text, "r_image": r_image, "lam": 0.3}, ["r_text", "lam"])


def test_float32_tracks_float64_reference_and_learnable_tau():
    x = features(7, seed=3)
    tau = torch.nn.Parameter(torch.tensor(0.07))
    s = relations.cosine_relation(torch.tensor(x, dtype=torch.float32), tau)
    assert s.dtype == torch.float32
    np.testing.assert_allclose(
        s.detach().numpy(), ref.cosine_relation(x, 0.07)[0], rtol=PARITY32_RTOL, atol=PARITY32_ATOL
    )
    s.sum().backward()
    assert tau.grad is not None and torch.isfinite(tau.grad)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, relations, name, kwargs, message)
