"""The image tower's pre-training before stage 1 (rebalance_torch.pretrain) and its place in the trainer."""

import json

import numpy as np
import pytest
import torch

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.karpathy import write_dataset
from rebalance_ref.shapes import make_splits, make_world
from rebalance_torch.config import TrainConfig
from rebalance_torch.models import ModelConfig, Student
from rebalance_torch.pretrain import pretrain_image_tower
from rebalance_torch.trainer import PRETRAIN_FILE, train

from .conftest import SMALL_MODEL


@pytest.fixture(scope="module")
def world():
    return make_world(128, "text-poor", seed=4)


def _student(seed=0):
    return Student(ModelConfig.preset("tiny", vocab_size=32, **SMALL_MODEL), seed=seed)


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_none_leaves_the_student_as_it_was(world):
    student = _student()
    before = _state(student)
    assert pretrain_image_tower(student, world, TrainConfig(image_pretrain="none")) == {}
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_supervised_changes_the_image_tower_alone_deterministically(world):
    config = TrainConfig(image_pretrain="supervised", image_pretrain_epochs=2)
    a, b = _student(), _student()
    before = _state(a)
    rng = torch.get_rng_state()
    record = pretrain_image_tower(a, world, config)
    assert torch.equal(torch.get_rng_state(), rng)            # the global RNG is left as it was
    pretrain_image_tower(b, world, config)
    assert record["kind"] == "supervised" and record["epochs"] == 2 and record["steps"] == 2 * (128 // 64)
    assert len(record["loss_per_epoch"]) == 2 and np.isfinite(record["loss_per_epoch"]).all()
    changed = {k for k, v in a.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("image_encoder.") for k in changed)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())   # same seed, same weights
    assert all(p.requires_grad for p in a.parameters())                              # nothing frozen
    other = _student()
    pretrain_image_tower(other, world, config.replace(seed=1))
    assert not torch.equal(other.image_encoder.stem[0].weight, a.image_encoder.stem[0].weight)


def test_supervised_pretraining_fits_its_labels(world):
    record = pretrain_image_tower(_student(), world, TrainConfig(image_pretrain="supervised", image_pretrain_epochs=8))
    losses = record["loss_per_epoch"]
    assert len(losses) == 8 and losses[-1] < 0.9 * losses[0]


def test_ssl_needs_images_only_and_supervised_says_what_to_use_instead(world):
    no_attrs = CaptionedImages(images=world.images, captions=world.captions, names=world.names)
    record = pretrain_image_tower(_student(), no_attrs, TrainConfig(image_pretrain="ssl", image_pretrain_epochs=1))
    assert record["kind"] == "ssl" and np.isfinite(record["loss_per_epoch"]).all()
    with pytest.raises(ValueError, match="--image-pretrain none or ssl"):
        pretrain_image_tower(_student(), no_attrs, TrainConfig(image_pretrain="supervised"))


@pytest.mark.parametrize("field, value", [("image_pretrain", "imagenet"), ("image_pretrain_epochs", 0),
                                          ("image_pretrain_epochs", 2.5)])
def test_config_refuses_bad_pretraining_fields(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_the_trainer_pretrains_before_a_fresh_stage_1_only(tmp_path):
    config = TrainConfig(n_train=64, n_val=8, n_test=8, stage1_steps=4, stage2_steps=0, batch_size=8,
                         eval_every=2, image_pretrain_epochs=1, model_overrides=SMALL_MODEL)
    train(config, tmp_path / "run", progress=False, log=lambda _: None, stop_after=2, evaluate_test=False)
    record = json.loads((tmp_path / "run" / PRETRAIN_FILE).read_text())
    assert record["kind"] == "supervised" and record["steps"] == 1
    (tmp_path / "run" / PRETRAIN_FILE).unlink()
    lines = []
    train(config, tmp_path / "run", resume=True, progress=False, log=lines.append, evaluate_test=False)
    assert not (tmp_path / "run" / PRETRAIN_FILE).exists()       # resumed from its checkpoint: not again
    assert not any("pre-training" in line for line in lines)


def test_real_style_data_names_every_option_that_needs_attributes_at_once(tmp_path):
    splits = make_splits("balanced", 32, 8, 8, seed=1)
    for split in splits.values():
        split.attributes = None
        split.canonical = None
    data = write_dataset(tmp_path / "data", splits)
    config = TrainConfig(data_dir=str(data), stage1_steps=2, stage2_steps=2, batch_size=8, eval_every=2,
                         image_pretrain_epochs=1, teacher_epochs=1, model_overrides=SMALL_MODEL)
    with pytest.raises(ValueError, match="--image-teacher ssl and --image-pretrain none"):
        train(config, tmp_path / "a", progress=False, log=lambda _: None)
    with pytest.raises(ValueError, match=r"use --image-pretrain none \("):
        train(config.replace(image_teacher="ssl"), tmp_path / "b", progress=False, log=lambda _: None)
    summary = train(config.replace(image_teacher="ssl", image_pretrain="ssl"), tmp_path / "c", progress=False,
                    log=lambda _: None, evaluate_test=False)
    assert json.loads((tmp_path / "c" / PRETRAIN_FILE).read_text())["kind"] == "ssl"
    assert summary["stages"][2]["finished"]


def test_a_mixture_of_experts_tower_keeps_no_routing_records_from_the_pretraining(world):
    from rebalance_torch.moe import moe_layers

    student = Student(ModelConfig.preset("tiny", vocab_size=32, **SMALL_MODEL, moe={"experts": 4}))
    pretrain_image_tower(student, world, TrainConfig(image_pretrain_epochs=1))
    layers = moe_layers(student)
    assert layers and all(layer.records == [] for layer in layers)
