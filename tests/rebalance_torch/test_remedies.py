"""The remedies for stage 2's start, each an option of TrainConfig, and the two recipes: each option changes
what it says and nothing else, the recipes resolve to the stated configs, and bad values are refused."""

import functools

import numpy as np
import pytest
import torch

from rebalance_ref import losses as ref_losses
from rebalance_torch.config import OFFICIAL_WEIGHTS, RECIPES, TEACHER_TERMS, TrainConfig
from rebalance_torch.objective import as_numbers, build_objective, compute_losses
from rebalance_torch.prepare import build_student
from rebalance_torch.schedule import teacher_phase
from rebalance_torch.step import make_optimizer, train_step
from tests.rebalance_torch.conftest import SMALL_MODEL

BASE = TrainConfig(model_overrides=SMALL_MODEL, batch_size=8)
TEACHERS_ONLY = {k: v for k, v in OFFICIAL_WEIGHTS.items() if k in TEACHER_TERMS}


def _setup(config, tokenizer, tau=0.04):
    torch.manual_seed(0)
    student = build_student(config, tokenizer)
    with torch.no_grad():
        student.temp.fill_(tau)   # as if stage 1 had left τ here
    objective = build_objective(student, config, 6, 5)
    rng = np.random.default_rng(0)
    feats = (torch.from_numpy(rng.standard_normal((8, 6), dtype=np.float32)),
             torch.from_numpy(rng.standard_normal((8, 5), dtype=np.float32)))
    return student, objective, feats


def _losses(config, batch, student, objective, feats, phase=(False, 1.0)):
    torch.manual_seed(1)   # the same ITM negatives on every call
    return compute_losses(student, objective, config, 2, batch.images, batch.ids, batch.mask, batch.image_idx,
                          *feats, teacher_phase=phase)


def _student_grad_norm(student) -> float:
    return sum(float(p.grad.abs().sum()) for p in student.parameters() if p.grad is not None)


def test_the_teacher_phase_warms_up_then_ramps_then_is_official():
    phases = [teacher_phase(s, 10, 0.2, 0.4) for s in range(10)]
    assert phases[:2] == [(True, 1.0)] * 2
    assert [f for _, f in phases[2:6]] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert not any(d for d, _ in phases[2:]) and phases[6:] == [(False, 1.0)] * 4
    assert all(teacher_phase(s, 250, 0.0, 0.0) == (False, 1.0) for s in range(250))


@pytest.mark.parametrize("relation", ["fused", "projected"])
def test_in_the_warm_up_the_teacher_terms_train_their_projections_and_not_the_student(batch_and_tokenizer,
                                                                                       relation):
    batch, tokenizer = batch_and_tokenizer
    config = BASE.replace(weights=dict(TEACHERS_ONLY), student_relation=relation)
    grads = {}
    for detached in (True, False):
        student, objective, feats = _setup(config, tokenizer)
        loss, _ = _losses(config, batch, student, objective, feats, (detached, 1.0))
        loss.backward()
        grads[detached] = (_student_grad_norm(student), float(objective.image_teacher_proj.weight.grad.abs().sum()),
                           float(objective.lam_raw.grad.abs()))
    assert grads[True][0] == 0.0          # no gradient of the teacher terms reaches the student's towers
    assert grads[False][0] > 0.0          # after the warm-up they do
    assert grads[True][1] > 0 and grads[True][2] > 0   # W_sv and λ learn during the warm-up
    assert grads[True][1] == pytest.approx(grads[False][1], rel=1e-5)   # and the same way as after it


def test_the_warm_up_leaves_itc_and_itm_gradients_to_the_student(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    baseline = BASE.replace(weights={"itc": 1.0, "itm": 2.0})
    student, objective, feats = _setup(baseline, tokenizer)
    _losses(baseline, batch, student, objective, feats)[0].backward()
    alone = [p.grad.clone() if p.grad is not None else None for p in student.parameters()]
    student, objective, feats = _setup(BASE, tokenizer)
    _losses(BASE, batch, student, objective, feats, (True, 1.0))[0].backward()
    for a, p in zip(alone, student.parameters(), strict=True):
        if a is not None:
            assert torch.allclose(a, p.grad, rtol=1e-4, atol=1e-7)


def test_the_ramp_and_the_scale_multiply_the_teacher_terms_weights(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    student, objective, feats = _setup(BASE, tokenizer)
    full, terms = _losses(BASE, batch, student, objective, feats)
    terms = as_numbers(terms)
    teacher_part = sum(OFFICIAL_WEIGHTS[k] * terms[k] for k in TEACHER_TERMS)
    assert teacher_part > 0.01
    ramped, _ = _losses(BASE, batch, student, objective, feats, (False, 0.25))
    assert float((full - ramped).detach()) == pytest.approx(0.75 * teacher_part, rel=1e-4)
    scaled_config = BASE.replace(teacher_scale=0.5)
    scaled, scaled_terms = _losses(scaled_config, batch, student, objective, feats)
    assert float((full - scaled).detach()) == pytest.approx(0.5 * teacher_part, rel=1e-4)
    assert as_numbers(scaled_terms)["kd"] == pytest.approx(terms["kd"], rel=1e-6)   # the terms, not the weights
    assert scaled_config.weight("kd", 2) == 1.0 and scaled_config.weight("itc", 2) == 1.0
    assert scaled_config.weight("itm", 1) == 2.0   # stage 1 is untouched


def test_an_own_teacher_tau_starts_at_stage_1s_tau_and_is_a_parameter_itc_does_not_touch(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    config = BASE.replace(teacher_tau="own")
    student, objective, feats = _setup(config, tokenizer, tau=0.04)
    assert objective.teacher_temp is not student.temp
    assert float(objective.teacher_temp.detach()) == pytest.approx(0.04)
    assert any(p is objective.teacher_temp for p in objective.parameters())
    # ITC (and ITM) alone: no gradient on τ'; IIC alone: a gradient on τ' and none on τ
    for weights, on_own, on_tau in (({"itc": 1.0, "itm": 2.0}, False, True), ({"iic": 1.0}, True, False)):
        student.zero_grad(set_to_none=True)
        objective.zero_grad(set_to_none=True)
        cfg = config.replace(weights=weights)
        _losses(cfg, batch, student, objective, feats)[0].backward()
        own_grad = objective.teacher_temp.grad
        assert (own_grad is not None and float(own_grad) != 0) == on_own
        assert (student.temp.grad is not None and float(student.temp.grad) != 0) == on_tau
    shared_student, shared_objective, _ = _setup(BASE, tokenizer)
    assert shared_objective.teacher_temp is None


def test_iic_with_an_own_tau_is_the_reference_formula_at_that_tau(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    config = BASE.replace(teacher_tau="own", weights={"iic": 1.0})
    student, objective, feats = _setup(config, tokenizer, tau=0.04)
    with torch.no_grad():
        objective.teacher_temp.fill_(0.09)   # τ' now differs from τ
        _, terms = _losses(config, batch, student, objective, feats)
        v = student.project_image(student.encode_image(batch.images)[1])
        target = objective.image_teacher_proj(feats[0])
    expected = ref_losses.single_contrast(v.double().numpy(), target.double().numpy(), 0.09,
                                          batch.image_idx.numpy())[0]
    assert as_numbers(terms)["iic"] == pytest.approx(float(expected), rel=1e-4)
    assert as_numbers(terms)["teacher_tau"] == pytest.approx(0.09)


def test_the_own_tau_is_clamped_like_tau(batch_and_tokenizer):
    batch, tokenizer = batch_and_tokenizer
    config = BASE.replace(teacher_tau="own", lr=0.5, tau_clamp=[0.03, 0.035])
    student, objective, feats = _setup(config, tokenizer, tau=0.032)
    optimizer = make_optimizer([student, objective], config)
    step = functools.partial(compute_losses, student, objective, config, 2)
    train_step(step, optimizer, student, config, batch, config.lr, *feats, objective=objective)
    assert 0.03 - 1e-6 <= float(objective.teacher_temp.detach()) <= 0.035 + 1e-6
    assert float(objective.teacher_temp.detach()) != pytest.approx(0.032)


def test_the_official_recipe_is_the_default_objective_and_rebalanced_is_what_the_docs_say():
    assert TrainConfig().with_recipe("official") == TrainConfig()
    assert TrainConfig().recipe() == "official"
    custom = TrainConfig(teacher_scale=0.25, stage1_steps=7)
    assert custom.with_recipe("official").stage1_steps == 7        # a recipe sets stage 2's objective only
    assert custom.with_recipe("official").teacher_scale == 1.0 and custom.recipe() is None
    rebalanced = TrainConfig().with_recipe("rebalanced")
    for field, value in RECIPES["rebalanced"].items():
        assert getattr(rebalanced, field) == value, field
    assert rebalanced.recipe() in ("rebalanced", "official")   # "official" when no remedy helped


@pytest.mark.parametrize("changes, message", [
    ({"teacher_tau": "separate"}, "teacher_tau must be one of shared, own"),
    ({"teacher_warmup": 1.5}, "teacher_warmup must lie in"),
    ({"teacher_ramp": -0.1}, "teacher_ramp must lie in"),
    ({"teacher_scale": 0}, "teacher_scale must lie in"),
    ({"teacher_scale": "half"}, "teacher_scale must be a finite number"),
    ({"teacher_warmup": 0.6, "teacher_ramp": 0.6}, "teacher_warmup + teacher_ramp must be <= 1"),
])
def test_bad_remedy_values_are_refused(changes, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        TrainConfig(**changes)


def test_an_unknown_recipe_is_refused():
    with pytest.raises(ValueError, match="recipe must be one of official, rebalanced"):
        TrainConfig().with_recipe("paper")
