import json

import numpy as np
import pytest
import torch

from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.objective import (
    as_numbers,
    build_objective,
    compute_losses,
    itm_positive_pairs,
    sample_itm_negatives,
)
from rebalance_torch.prepare import build_student, prepare
from rebalance_torch.runlog import read_metrics
from rebalance_torch.schedule import batch_rows, lr_at
from rebalance_torch.step import make_optimizer
from rebalance_torch.trainer import train

SMALL_MODEL = {"vision_width": 32, "text_width": 32, "embed_dim": 16, "heads": 2, "vision_depth": 1,
               "text_depth": 1}
TINY = TrainConfig(n_train=24, n_val=12, n_test=12, stage1_steps=6, stage2_steps=6, batch_size=8, eval_every=3,
                   k_test=4, teacher_epochs=1, model_overrides=SMALL_MODEL, tau_clamp=[0.05, 0.065], lr=3e-3)


def _quiet(_message):
    pass


@pytest.fixture(scope="module")
def prepared():
    torch.set_num_threads(1)
    return prepare(TINY, teachers=True, log=_quiet)


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    summary = train(TINY, run_dir, prepared=prepared, progress=False, log=_quiet)
    return run_dir, summary


def test_a_run_folder_holds_everything(run):
    run_dir, summary = run
    for name in ("config.json", "tokenizer.json", "metrics.jsonl", "eval.json", "log.txt", "teacher_check.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "report.md").exists()  # reports and plots are the application's (rebalance.report)
    for stage in (1, 2):
        for kind in ("last", "best"):
            assert ckpt.checkpoint_path(run_dir, stage, kind).is_file()
    assert TrainConfig.load(run_dir / "config.json") == TINY
    assert json.loads((run_dir / "eval.json").read_text()) == summary["test"]
    student, config, tokenizer = ckpt.load_student(run_dir)
    assert config == TINY and tokenizer.vocab_size == student.config.vocab_size


def test_metrics_log_every_term_lambda_and_temperatures(run):
    rows = read_metrics(run[0])
    stage2 = [r for r in rows if r["stage"] == 2 and "loss" in r]
    assert stage2, rows
    for key in ("itc", "itm", "iic", "ttc", "kd", "kdi", "kdt", "lam", "tau", "tau2", "lr"):
        assert all(np.isfinite(r[key]) for r in stage2), key
    stage1 = [r for r in rows if r["stage"] == 1 and "loss" in r]
    assert all("kd" not in r and "lam" not in r for r in stage1)
    assert stage2[-1]["lam"] != 0.5  # λ is learned (through KD)
    assert all(r["tau"] <= 0.065 + 1e-7 for r in rows if "tau" in r)  # τ clamped after every step
    assert [r["step"] for r in rows if "val" in r and r["stage"] == 1] == [3, 6]


def test_a_few_steps_lower_the_full_objective(prepared):
    torch.manual_seed(0)
    config = TINY.replace(lr=3e-3, warmup=0.0)
    student = build_student(config, prepared.tokenizer)
    feats = prepared.teachers
    objective = build_objective(student, config, feats.train_image.shape[1], feats.train_text.shape[1])
    optimizer = make_optimizer([student, objective], config)
    rows = batch_rows(0, 2, 0, len(prepared.dataset), 16)
    images, ids, mask, idx, _ = prepared.collate([prepared.dataset[int(r)] for r in rows])
    a, b = torch.from_numpy(feats.train_image[rows]), torch.from_numpy(feats.train_text[rows])
    losses = []
    for _ in range(20):
        loss, terms = compute_losses(student, objective, config, 2, images, ids, mask, idx, a, b)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(terms["loss"])
    assert losses[-1] < 0.85 * losses[0], losses


@pytest.mark.parametrize("changes", [
    {"distance": "wasserstein", "student_relation": "projected"},
    {"lam": "sigmoid", "tau2": "fixed", "distance": "mse"},
    {"distance": "cumsum_l1"},
])
def test_objective_options_give_finite_losses_and_gradients(prepared, changes):
    config = TINY.replace(**changes)
    student = build_student(config, prepared.tokenizer)
    feats = prepared.teachers
    objective = build_objective(student, config, feats.train_image.shape[1], feats.train_text.shape[1])
    rows = batch_rows(0, 2, 0, len(prepared.dataset), 8)
    images, ids, mask, idx, _ = prepared.collate([prepared.dataset[int(r)] for r in rows])
    loss, terms = compute_losses(student, objective, config, 2, images, ids, mask, idx,
                                 torch.from_numpy(prepared.teachers.train_image[rows]),
                                 torch.from_numpy(prepared.teachers.train_text[rows]))
    loss.backward()
    terms = as_numbers(terms)
    assert np.isfinite(terms["loss"]) and terms["kd"] > 0
    assert objective.lam_raw.grad is not None and float(objective.lam_raw.grad) != 0
    assert (objective.tau2_value.grad is None) == (config.tau2 == "fixed")
    if config.distance == "wasserstein":
        assert objective.image_wd_mlp[0].weight.grad is not None


def test_resume_replays_an_uninterrupted_run_exactly(prepared, run, tmp_path):
    full_dir, _ = run
    part = tmp_path / "part"
    first = train(TINY, part, prepared=prepared, progress=False, log=_quiet, stop_after=4)
    assert not first["stages"][1]["finished"]
    with pytest.raises(ValueError, match="resume"):
        train(TINY, part, prepared=prepared, progress=False, log=_quiet)
    train(TINY, part, prepared=prepared, progress=False, log=_quiet, resume=True, stop_after=5)  # stops in stage 2
    train(TINY, part, prepared=prepared, progress=False, log=_quiet, resume=True)
    a = ckpt.load_checkpoint(ckpt.checkpoint_path(full_dir, 2, "last"))
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(part, 2, "last"))
    for key in ("student", "objective"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert read_metrics(full_dir) == read_metrics(part)
    assert json.loads((full_dir / "eval.json").read_text()) == json.loads((part / "eval.json").read_text())


def test_resume_or_init_from_another_config_is_refused(prepared, run, tmp_path):
    full_dir, _ = run
    with pytest.raises(ValueError, match="lr: run 0.003 vs now 0.01"):
        train(TINY.replace(lr=0.01), full_dir, prepared=prepared, progress=False, log=_quiet, resume=True)
    other = TINY.replace(model_overrides={**SMALL_MODEL, "embed_dim": 8})
    with pytest.raises(ValueError, match="model_overrides"):
        train(other, tmp_path / "x", prepared=prepared, init=ckpt.checkpoint_path(full_dir, 1, "best"),
              stages=(2,), progress=False, log=_quiet)
    with pytest.raises(ValueError, match="stage-1 checkpoint"):
        train(TINY, tmp_path / "y", prepared=prepared, stages=(2,), progress=False, log=_quiet)


def test_itm_negatives_never_come_from_the_same_image():
    torch.manual_seed(0)
    idx = torch.tensor([0, 0, 1, 2, 2, 2, 3, 4])
    v = torch.nn.functional.normalize(torch.randn(8, 6), dim=1)
    t = torch.nn.functional.normalize(v + 0.1 * torch.randn(8, 6), dim=1)
    for _ in range(50):
        neg_image, neg_text = sample_itm_negatives(v, t, idx, torch.tensor(0.07))
        assert (idx[neg_image] != idx).all() and (idx[neg_text] != idx).all()


def test_itm_negatives_skip_captions_identical_to_one_of_the_images_own():
    torch.manual_seed(0)
    idx = torch.tensor([0, 1, 2, 3])
    ids = torch.tensor([[1, 5, 6, 0], [1, 5, 6, 0], [1, 7, 0, 0], [1, 8, 9, 0]])  # rows 0 and 1: the same words
    same = itm_positive_pairs(idx, ids)
    assert same[0, 1] and same[1, 0] and not same[0, 2] and same.diagonal().all()
    assert torch.equal(itm_positive_pairs(idx), torch.eye(4, dtype=torch.bool))
    v = torch.nn.functional.normalize(torch.randn(4, 6), dim=1)
    for _ in range(50):
        neg_image, neg_text = sample_itm_negatives(v, v, idx, torch.tensor(0.07), same=same)
        assert not same[torch.arange(4), neg_image].any() and not same[torch.arange(4), neg_text].any()


def test_schedule_and_batch_order():
    lrs = [lr_at(s, 100, 0.1, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and max(lrs) == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:], strict=False)) and lrs[-1] < 0.02
    epoch = torch.cat([batch_rows(3, 1, s, 40, 8) for s in range(5)])
    assert sorted(epoch.tolist()) == list(range(40))
    assert torch.equal(batch_rows(3, 1, 7, 40, 8), batch_rows(3, 1, 7, 40, 8))
    assert not torch.equal(batch_rows(3, 1, 0, 40, 8), batch_rows(3, 1, 5, 40, 8))


def test_the_progress_bar_names_its_phase_and_shows_the_logged_loss_and_tau(prepared, tmp_path, monkeypatch, capsys):
    from rebalance_torch import runlog

    config = TINY.replace(stage1_steps=12)  # LOG_EVERY = 10: one logged step before the stage's last
    monkeypatch.setattr(runlog, "interactive", lambda: True)  # as on a terminal
    lines = []
    train(config, tmp_path / "bar", prepared=prepared, stages=(1,), log=lines.append, label="stage 1 — mine",
          evaluate_test=False)
    err = capsys.readouterr().err
    assert "stage 1 — mine" in err and "12/12" in err and "loss=" in err and "τ=" in err
    assert any(line.startswith("stage 1 — mine: steps 0->12") for line in lines)
    monkeypatch.setattr(runlog, "interactive", lambda: False)  # a pipe or a log file: no bar
    train(config, tmp_path / "pipe", prepared=prepared, stages=(1,), log=_quiet, evaluate_test=False)
    assert capsys.readouterr().err == ""
