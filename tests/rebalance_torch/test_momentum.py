"""Momentum distillation's mirror: parity with the reference in float64 (values, gradients, targets), autograd's
gradcheck, the same errors, and the trainer's state (EMA, queue, warm-up) behaving as documented."""

import numpy as np
import pytest
import torch

from rebalance_ref import momentum as ref
from rebalance_ref.tolerances import PARITY64_ATOL, PARITY64_RTOL
from rebalance_torch import momentum
from rebalance_torch.models import ModelConfig, Student
from tests.rebalance_ref.test_momentum import BATCHES, momentum_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error, to_torch


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("queue", (0, 5))
def test_loss_parity(batch, queue):
    inputs, _, _ = momentum_inputs(batch, queue, seed=batch + queue)
    assert assert_parity(ref.momentum_itc, momentum.momentum_itc, inputs) == {"v", "t", "tau"}


@pytest.mark.parametrize("alpha", (0.0, 0.4, 1.0))
def test_targets_parity(alpha):
    inputs, idx, key_idx = momentum_inputs(7, 5, seed=2)
    args = (inputs["image_keys"], inputs["text_keys"], inputs["tau"], alpha, idx, key_idx)
    expected, _ = ref.momentum_targets(*args)
    got = momentum.momentum_targets(*(to_torch(a) for a in args))
    assert not got.requires_grad
    np.testing.assert_allclose(got.numpy(), expected, rtol=PARITY64_RTOL, atol=PARITY64_ATOL)


def test_loss_gradcheck():
    inputs, _, _ = momentum_inputs(5, 4, seed=9)
    assert_gradcheck(momentum.momentum_itc, inputs, ["v", "t", "tau"])


def test_same_errors_as_the_reference():
    inputs, idx, key_idx = momentum_inputs(5, 4)
    bad = {"image_keys": inputs["image_keys"], "text_keys": inputs["text_keys"], "tau": 0.2, "alpha": 2.0,
           "idx": idx, "key_idx": key_idx}
    assert_same_error(ref, momentum, "momentum_targets", bad, "alpha: expected a weight in [0, 1], got 2.0")
    bad_loss = {**inputs, "targets": inputs["targets"][:1]}
    assert_same_error(ref, momentum, "momentum_itc", bad_loss, "targets: expected shape (2, 5, 9)")


def _student():
    return Student(ModelConfig(vocab_size=20, vision_width=16, text_width=16, embed_dim=8, heads=2,
                               vision_depth=1, text_depth=1), seed=0)


def test_ema_queue_and_warmup():
    student = _student()
    state = momentum.MomentumDistill(student, momentum=0.9, queue_size=6, alpha=0.4, warmup_steps=4, seed=1)
    assert not any(p.requires_grad for p in state.model.parameters())
    assert float(state.alpha()) == 0.0
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in state.model.parameters()]
    images = torch.rand(4, 3, 32, 32)
    ids = torch.randint(3, 20, (4, 5))
    mask = torch.ones_like(ids)
    idx = torch.tensor([3, 3, 7, 8])
    v, t = student.embed_image(images), student.embed_text(ids, mask)
    loss = state.itc(student, images, ids, mask, v, t, idx, student.temp, lambda x: x)
    loss.backward()
    assert student.temp.grad is not None and student.vision_proj.weight.grad is not None
    for old, new, online in zip(before, state.model.parameters(), student.parameters(), strict=True):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online.detach())
    # newest first: the batch's ids, then the unfilled slots (-1) shifted back
    assert state.idx_queue.tolist() == [3, 3, 7, 8, -1, -1]
    torch.testing.assert_close(state.image_queue[:4], state.model.embed_image(images))
    assert int(state.steps) == 1 and float(state.alpha()) == pytest.approx(0.1)
    for _ in range(5):
        state.itc(student, images, ids, mask, v.detach(), t.detach(), idx, student.temp, lambda x: x)
    assert float(state.alpha()) == pytest.approx(0.4)
    assert set(state.state_dict()) >= {"image_queue", "text_queue", "idx_queue", "steps"}
