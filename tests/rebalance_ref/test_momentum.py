"""Momentum distillation's reference: gradients against finite differences, its reduction to ITC, the targets'
meaning (soft labels over every key, the momentum model's own distribution), and clear errors."""

import numpy as np
import pytest

from rebalance_ref import losses, momentum
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, IDENTITY_RTOL, ORACLE_RTOL

BATCHES = (3, 7)


def momentum_inputs(batch, queue, seed=0, alpha=0.4, width=6):
    """Online (v, t), momentum keys [batch; queue] with ids, tau, and the mixed targets; ids repeat within the batch
    and between the batch and the queue, and one queue slot is unfilled (id -1)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, max(1, batch // 2), batch) + 10
    idx[-1] = idx[0]
    key_idx = np.concatenate([idx, rng.integers(8, 8 + batch, queue)])
    if queue:
        key_idx[-1] = -1
    v, t = rng.standard_normal((batch, width)), rng.standard_normal((batch, width))
    image_keys = np.concatenate([v + 0.3 * rng.standard_normal(v.shape), rng.standard_normal((queue, width))])
    text_keys = np.concatenate([t + 0.3 * rng.standard_normal(t.shape), rng.standard_normal((queue, width))])
    tau = float(rng.uniform(0.1, 0.5))
    targets, grads = momentum.momentum_targets(image_keys, text_keys, tau, alpha, idx, key_idx)
    assert grads == {}
    return {"v": v, "t": t, "image_keys": image_keys, "text_keys": text_keys, "tau": tau, "targets": targets}, idx, \
        key_idx


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("queue", (0, 5))
def test_gradients_match_finite_differences(batch, queue):
    inputs, _, _ = momentum_inputs(batch, queue, seed=batch + queue)
    errors = gradient_errors(momentum.momentum_itc, inputs)
    assert set(errors) == {"v", "t", "tau"}
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("batch", BATCHES)
def test_without_queue_and_alpha_zero_it_is_itc(batch):
    """Keys = the online embeddings themselves, targets = the id soft labels: exactly the paper's ITC."""
    inputs, idx, _ = momentum_inputs(batch, 0, seed=batch)
    targets, _ = momentum.momentum_targets(inputs["v"], inputs["t"], inputs["tau"], 0.0, idx, idx)
    value, grads = momentum.momentum_itc(inputs["v"], inputs["t"], inputs["v"], inputs["t"], inputs["tau"], targets)
    expected, _ = losses.itc(inputs["v"], inputs["t"], inputs["tau"], idx)
    assert value == pytest.approx(expected, rel=IDENTITY_RTOL)
    assert set(grads) == {"v", "t", "tau"}


def test_targets_are_the_soft_labels_blended_with_the_momentum_softmax():
    inputs, idx, key_idx = momentum_inputs(5, 4, seed=3)
    y0, _ = momentum.momentum_targets(inputs["image_keys"], inputs["text_keys"], inputs["tau"], 0.0, idx, key_idx)
    y1, _ = momentum.momentum_targets(inputs["image_keys"], inputs["text_keys"], inputs["tau"], 1.0, idx, key_idx)
    ya, _ = momentum.momentum_targets(inputs["image_keys"], inputs["text_keys"], inputs["tau"], 0.3, idx, key_idx)
    np.testing.assert_allclose(y0.sum(axis=2), 1.0, rtol=IDENTITY_RTOL)
    np.testing.assert_allclose(ya, 0.3 * y1 + 0.7 * y0, rtol=ORACLE_RTOL)
    # alpha = 0: uniform over the keys that share the row's image id, the queue's included; the unfilled slot never
    for i in range(5):
        same = key_idx == idx[i]
        np.testing.assert_allclose(y0[0, i], same / same.sum(), rtol=IDENTITY_RTOL)
    assert np.all(y0[:, :, -1] == 0)
    # alpha = 1: a loop over the definition, softmax of the momentum image vs every momentum text
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    for i in range(5):
        s = unit(inputs["image_keys"])[i] @ unit(inputs["text_keys"]).T / inputs["tau"]
        np.testing.assert_allclose(y1[0, i], np.exp(s) / np.exp(s).sum(), rtol=ORACLE_RTOL)


@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 1.5}, "alpha: expected a weight in [0, 1]"),
    ({"key_idx": None}, "key_idx: expected a 1-d array of image ids"),
    ({"key_idx": np.arange(9)}, "key_idx: its first B entries must be the batch's ids"),
    ({"tau": 0.0}, "tau: expected a positive scalar"),
])
def test_targets_refuse_bad_input(kwargs, message):
    inputs, idx, key_idx = momentum_inputs(5, 4)
    args = {"image_keys": inputs["image_keys"], "text_keys": inputs["text_keys"], "tau": 0.2, "alpha": 0.4,
            "idx": idx, "key_idx": key_idx, **kwargs}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        momentum.momentum_targets(**args)


def test_loss_refuses_targets_of_another_shape():
    inputs, _, _ = momentum_inputs(5, 4)
    with pytest.raises(ValueError, match=r"targets: expected shape \(2, 5, 9\)"):
        momentum.momentum_itc(**{**inputs, "targets": inputs["targets"][:, :, :-1]})
