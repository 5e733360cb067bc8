import numpy as np
import pytest
import torch

from rebalance_ref import losses as ref
from rebalance_ref.tolerances import KINKED_FD_STEP, PARITY32_ATOL, PARITY32_RTOL, PARITY64_ATOL, PARITY64_RTOL
from rebalance_torch import losses
from tests.rebalance_ref.test_losses import BATCHES, DISTANCES, bad_cases, contrast_inputs, structure_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error, to_torch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
def test_contrast_parity(batch, repeated):
    v, t, tau, idx = contrast_inputs(batch, repeated, seed=batch)
    checked = assert_parity(ref.itc, losses.itc, {"v": v, "t": t, "tau": tau, "idx": idx})
    assert checked == {"v", "t", "tau"}
    inputs = {"x": v, "teacher": t, "tau": tau, "idx": idx}
    assert assert_parity(ref.single_contrast, losses.single_contrast, inputs) == {"x", "teacher", "tau"}


@pytest.mark.parametrize("batch", (3, 7))
def test_contrast_gradcheck(batch):
    v, t, tau, idx = contrast_inputs(batch, True, seed=batch)
    assert_gradcheck(losses.itc, {"v": v, "t": t, "tau": tau, "idx": idx}, ["v", "t", "tau"])
    assert_gradcheck(losses.single_contrast, {"x": v, "teacher": t, "tau": tau, "idx": idx}, ["x", "teacher", "tau"])


def test_itm_parity_and_gradcheck():
    rng = np.random.default_rng(0)
    inputs = {"logits": 3 * rng.standard_normal((9, 2)), "labels": rng.integers(0, 2, 9)}
    assert assert_parity(ref.itm, losses.itm, inputs) == {"logits"}
    assert_gradcheck(losses.itm, inputs, ["logits"])


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_structure_distill_parity(batch, distance):
    inputs = {**structure_inputs(batch, distance, seed=batch), "weights": {"kd": 2.0, "kdi": 1.0, "kdt": 0.5}}
    expected = {"z", "lam", "tau2"} | ({"row_weights"} if distance == "wasserstein" else set())
    assert assert_parity(ref.structure_distill, losses.structure_distill, inputs) == expected


@pytest.mark.parametrize("distance", DISTANCES)
def test_structure_terms_parity(distance):
    inputs = structure_inputs(7, distance, seed=17)
    terms, grads = ref.structure_terms(**inputs)
    tensors = {k: to_torch(v, requires_grad=k in ("z", "lam", "tau2", "row_weights")) for k, v in inputs.items()}
    out = losses.structure_terms(**tensors)
    assert set(out) == {"kd", "kdi", "kdt"}
    for term, value in out.items():
        assert value.item() == pytest.approx(terms[term], rel=PARITY64_RTOL, abs=PARITY64_ATOL)
        names = list(grads[term])
        auto = torch.autograd.grad(value, [tensors[k] for k in names], retain_graph=True, allow_unused=True)
        for name, g in zip(names, auto, strict=True):
            got = np.zeros_like(grads[term][name]) if g is None else g.numpy()
            np.testing.assert_allclose(got, grads[term][name], rtol=PARITY64_RTOL, atol=PARITY64_ATOL, err_msg=name)


@pytest.mark.parametrize("batch", (2, 3, 7))
@pytest.mark.parametrize("distance", DISTANCES)
def test_structure_distill_gradcheck_reaches_teachers(batch, distance):
    """In torch the gradient also reaches the teacher features (the official "wd" trains MLPs in front of them)."""
    inputs = structure_inputs(batch, distance, seed=batch + 50)
    wrt = ["z", "img_teacher", "txt_teacher", "lam", "tau2"] + (["row_weights"] if distance == "wasserstein" else [])
    assert_gradcheck(losses.structure_distill, inputs, wrt, eps=KINKED_FD_STEP)


def test_float32_training_step_with_learnable_lam_and_tau2():
    inputs = structure_inputs(16, "mae", seed=5)
    z = torch.tensor(inputs["z"], dtype=torch.float32, requires_grad=True)
    teachers = [torch.tensor(inputs[k], dtype=torch.float32) for k in ("img_teacher", "txt_teacher")]
    lam = torch.nn.Parameter(torch.tensor(0.5))
    tau2 = torch.nn.Parameter(torch.tensor(0.07))
    loss = losses.structure_distill(z, *teachers, lam, tau2)
    expected, grads = ref.structure_distill(inputs["z"], inputs["img_teacher"], inputs["txt_teacher"], 0.5, 0.07)
    assert loss.item() == pytest.approx(expected, rel=PARITY32_RTOL)
    loss.backward()
    np.testing.assert_allclose(z.grad.numpy(), grads["z"], rtol=PARITY32_RTOL, atol=PARITY32_ATOL)
    assert tau2.grad.item() == pytest.approx(grads["tau2"], rel=PARITY32_RTOL)
    assert tau2.grad.item() < 0  # the unclamped tau2 drifts upward under gradient descent


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_same_message_as_reference(name, kwargs, message):
    assert_same_error(ref, losses, name, kwargs, message)
