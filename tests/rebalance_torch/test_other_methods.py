"""GCL and m²-Mix as options of the trainer: terms by name in the weights, λ drawn once per step from the step's
seeded RNG, no read from the device on a step that does not log, and a validated config."""

import numpy as np
import pytest
import torch

from rebalance_torch import input_checks
from rebalance_torch.config import TrainConfig
from rebalance_torch.objective import as_numbers
from tests.rebalance_torch.conftest import SMALL_MODEL
from tests.rebalance_torch.test_step import _count_reads, _step

WEIGHTS = {"gcl": {"gcl": 1.0, "itm": 2.0}, "m2mix": {"itc": 1.0, "itm": 2.0, "m2mix": 0.1}}


@pytest.mark.parametrize("method", sorted(WEIGHTS))
def test_the_option_trains_and_reads_nothing_back(monkeypatch, batch_and_tokenizer, method):  # noqa: F811
    batch, tokenizer = batch_and_tokenizer
    config = TrainConfig(model_overrides=SMALL_MODEL, batch_size=8, weights=WEIGHTS[method])
    step, student = _step(config, batch, tokenizer, 2)
    before = [p.detach().clone() for p in student.vision_proj.parameters()]
    numbers = as_numbers(step())
    assert method in numbers and np.isfinite(numbers[method]) and numbers[method] > 0
    assert any(not torch.equal(p, q) for p, q in zip(before, student.vision_proj.parameters(), strict=True))
    with input_checks.skipped():
        assert len(_count_reads(monkeypatch, step)) <= 1


def test_mix_lambda_comes_from_the_step_seed(batch_and_tokenizer):  # noqa: F811
    batch, tokenizer = batch_and_tokenizer
    config = TrainConfig(model_overrides=SMALL_MODEL, batch_size=8, weights=WEIGHTS["m2mix"], mix_beta=0.5)
    draws = []
    for seed in (3, 3, 4):
        step, _ = _step(config, batch, tokenizer, 2)
        torch.manual_seed(seed)   # what the trainer does before every step
        draws.append(as_numbers(step())["mix_lam"])
    assert draws[0] == draws[1] != draws[2]
    assert all(0.0 < d < 1.0 for d in draws)


@pytest.mark.parametrize(("field", "value"), [("mix_beta", 0.0), ("mix_tau", -1.0), ("mix_beta", float("nan"))])
def test_bad_mix_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_weights_accept_the_new_names():
    assert TrainConfig(weights={"gcl": 1.0}).weight("gcl", 2) == 1.0
    assert TrainConfig(stage1_weights={"itc": 1.0, "m2mix": 0.1}).weight("m2mix", 1) == 0.1
