"""One training step: the function every trainer calls, and the reads from the device it makes (none on a step
that does not log, once the first step of a stage has checked the inputs)."""

import functools
import sys

import numpy as np
import pytest
import torch

from rebalance_torch import input_checks
from rebalance_torch.config import BASELINE_WEIGHTS, TrainConfig
from rebalance_torch.objective import as_numbers, build_objective, compute_losses
from rebalance_torch.prepare import build_student
from rebalance_torch.step import make_optimizer, train_step
from tests.rebalance_torch.conftest import SMALL_MODEL

# The ways a tensor's value reaches Python: each waits for the device to finish what is queued.
READS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__")


def _step(config, batch, tokenizer, stage, phase=(False, 1.0)):
    torch.manual_seed(0)
    student = build_student(config, tokenizer)
    objective = build_objective(student, config, 6, 5) if stage == 2 else None
    optimizer = make_optimizer([student] + ([objective] if objective is not None else []), config)
    rng = np.random.default_rng(0)
    a = torch.from_numpy(rng.standard_normal((8, 6), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal((8, 5), dtype=np.float32))
    step_losses = functools.partial(compute_losses, student, objective, config, stage)
    return lambda: train_step(step_losses, optimizer, student, config, batch, config.lr, a, b, objective=objective,
                              teacher_phase=phase), student


def _count_reads(monkeypatch, run) -> list[str]:
    """Run `run()` and return the tensor reads it made, outside torch.optim (whose step counters live on the host
    by design: AdamW keeps them as CPU scalars unless `capturable`)."""
    calls = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def wrapped(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1).f_code.co_filename
            if "torch/optim" not in caller.replace("\\", "/"):
                calls.append(f"{_name} from {caller}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    run()
    monkeypatch.undo()
    return calls


# The methods' options: momentum distillation (its EMA, queue and α warm-up) and a mixture-of-experts student
# (routing with capacity, its auxiliary terms).
MOD = {"itc_momentum": 0.99, "itc_queue": 16}
# The remedies (docs/training.md): the teacher terms' own τ', in the detached warm-up and in the weight ramp.
OWN_TAU = {"teacher_tau": "own", "teacher_scale": 0.5}
MOE = {"model_overrides": {**SMALL_MODEL, "moe": {"experts": 4, "top_k": 2}},
       "weights": {"itc": 1, "itm": 2, "moe_importance": 0.01, "moe_load": 0.01, "moe_local": 0.01,
                   "moe_global": 0.01}}


@pytest.mark.parametrize("stage, weights, relation, options, phase", [
    (1, None, "fused", {}, None), (2, None, "fused", {}, None), (2, None, "projected", {}, None),
    (2, BASELINE_WEIGHTS, "fused", {}, None), (2, BASELINE_WEIGHTS, "fused", MOD, None), (2, None, "fused", MOD, None),
    (2, None, "fused", MOE, None), (1, None, "fused", MOE, None), (2, None, "fused", OWN_TAU, (True, 1.0)),
    (2, None, "projected", OWN_TAU, (False, 0.25))])
def test_a_step_that_does_not_log_reads_nothing_back_from_the_device(monkeypatch, batch_and_tokenizer, stage,
                                                                     weights, relation, options, phase):
    batch, tokenizer = batch_and_tokenizer
    config = TrainConfig(**{"model_overrides": SMALL_MODEL, "batch_size": 8, "student_relation": relation,
                            **({"weights": dict(weights)} if weights else {}), **options})
    step, _ = _step(config, batch, tokenizer, stage, phase or (False, 1.0))
    step()  # warm-up, and the checked first step of a stage
    with input_checks.skipped():
        calls = _count_reads(monkeypatch, step)
    assert len(calls) <= 1, calls


def test_the_counter_sees_the_input_checks_and_the_logged_numbers(monkeypatch, batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    step, _ = _step(TrainConfig(model_overrides=SMALL_MODEL, batch_size=8), batch, tokenizer, 2)
    assert len(_count_reads(monkeypatch, step)) > 5  # checked inputs read values: the counter is not blind
    with input_checks.skipped():
        terms = step()
    numbers = as_numbers(terms)
    assert set(numbers) >= {"loss", "itc", "itm", "iic", "ttc", "kd", "kdi", "kdt", "tau", "lam", "tau2"}
    assert all(isinstance(x, float) and np.isfinite(x) for x in numbers.values())


def test_checked_and_unchecked_steps_compute_the_same(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    config = TrainConfig(model_overrides=SMALL_MODEL, batch_size=8)
    checked_step, checked_student = _step(config, batch, tokenizer, 2)
    unchecked_step, unchecked_student = _step(config, batch, tokenizer, 2)
    torch.manual_seed(1)
    first = as_numbers(checked_step())
    torch.manual_seed(1)
    with input_checks.skipped():
        second = as_numbers(unchecked_step())
    assert first == second
    for p, q in zip(checked_student.parameters(), unchecked_student.parameters(), strict=True):
        assert torch.equal(p, q)


def test_tau_is_clamped_after_the_update(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    config = TrainConfig(model_overrides=SMALL_MODEL, batch_size=8, lr=0.5, tau_clamp=[0.06, 0.065])
    step, student = _step(config, batch, tokenizer, 1)
    before = float(student.temp.detach())
    logged = as_numbers(step())
    assert 0.06 <= float(student.temp.detach()) <= 0.065 and float(student.temp.detach()) != before
    assert logged["tau"] == pytest.approx(before, rel=1e-7)  # the τ this step's loss used, not the updated one
