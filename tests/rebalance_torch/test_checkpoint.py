import pickle

import pytest
import torch

from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.objective import Objective
from rebalance_torch.prepare import build_student
from rebalance_torch.step import make_optimizer

CAPTIONS = ["a red circle left of a blue square", "a small green triangle", "two shapes"]


def _run_folder(tmp_path, config=None):
    """A run folder holding a freshly initialised student's stage-1 'best' checkpoint and its tokenizer."""
    config = config or TrainConfig(n_train=10, n_val=5, n_test=5)
    tokenizer = Tokenizer.build(CAPTIONS, max_len=config.max_len)
    student = build_student(config, tokenizer)
    optimizer = make_optimizer([student], config)
    state = ckpt.training_state(config, student, None, optimizer, 1, 7, {"score": 1.0, "step": 7}, {"cos_r_mean": 1.0})
    ckpt.save_checkpoint(state, ckpt.checkpoint_path(tmp_path, 1, "best"))
    tokenizer.save(tmp_path / "tokenizer.json")
    return config, student, tokenizer


def test_checkpoint_holds_only_tensors_and_primitives(tmp_path):
    config, student, _ = _run_folder(tmp_path)
    path = ckpt.checkpoint_path(tmp_path, 1, "best")
    state = torch.load(path, weights_only=True)  # raises if anything needs pickle's code path
    assert state["step"] == 7 and state["config"] == config.to_dict()
    for name, tensor in student.state_dict().items():
        assert torch.equal(state["student"][name], tensor)


def test_load_student_returns_student_config_and_tokenizer(tmp_path):
    config, student, tokenizer = _run_folder(tmp_path)
    loaded, loaded_config, loaded_tokenizer = ckpt.load_student(tmp_path)
    assert loaded_config == config and loaded_tokenizer == tokenizer and not loaded.training
    for name, tensor in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="no 'last' checkpoint"):
        ckpt.load_student(tmp_path, which="last")
    with pytest.raises(ValueError, match="which must be one of"):
        ckpt.load_student(tmp_path, which="newest")


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ckpt.save_checkpoint({"format": ckpt.FORMAT_VERSION, "step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({"format": ckpt.FORMAT_VERSION, "step": 2, "w": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    assert ckpt.load_checkpoint(path)["step"] == 1


class _Evil:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_foreign_files_are_refused_with_clear_errors(tmp_path):
    pickled = tmp_path / "evil.pt"
    pickled.write_bytes(pickle.dumps({"format": 1, "x": _Evil()}, protocol=2))
    with pytest.raises(ValueError, match="weights_only=True"):
        ckpt.load_checkpoint(pickled)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(ValueError, match="expected a rebalance checkpoint"):
        ckpt.load_checkpoint(other)
    with pytest.raises(ValueError, match="no such file"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


def test_a_checkpoint_from_another_config_is_named_as_such(tmp_path):
    config, _, _ = _run_folder(tmp_path)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(tmp_path, 1, "best"))
    ckpt.check_same_config(state, config.replace(threads=2), "x")  # runtime fields may differ
    with pytest.raises(ValueError, match=r"another config \(lr: checkpoint 0.001 vs now 0.5\)"):
        ckpt.check_same_config(state, config.replace(lr=0.5), "x")


def test_weights_that_do_not_fit_the_model_config_are_refused(tmp_path):
    config, student, _ = _run_folder(tmp_path)
    path = ckpt.checkpoint_path(tmp_path, 1, "best")
    state = ckpt.load_checkpoint(path)
    state["model_config"]["embed_dim"] = 32  # the saved weights are 128-wide
    ckpt.save_checkpoint(state, path)
    with pytest.raises(ValueError, match="do not fit"):
        ckpt.load_student(tmp_path)


def test_objective_state_round_trips(tmp_path):
    config = TrainConfig(lam="sigmoid", tau2="fixed")
    objective = Objective(config, embed_dim=8, relation_width=6, image_dim=5, text_dim=4)
    assert abs(objective.lam().item() - 0.5) < 1e-6 and not objective.tau2().requires_grad
    ckpt.save_checkpoint({"format": ckpt.FORMAT_VERSION, "objective": objective.state_dict()}, tmp_path / "o.pt")
    again = Objective(config.replace(seed=5), embed_dim=8, relation_width=6, image_dim=5, text_dim=4)
    again.load_state_dict(ckpt.load_checkpoint(tmp_path / "o.pt")["objective"])
    assert torch.equal(again.image_teacher_proj.weight, objective.image_teacher_proj.weight)
