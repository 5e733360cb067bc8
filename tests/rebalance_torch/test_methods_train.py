"""The methods' trainer options end to end on a tiny run: momentum distillation (stage 2) and a mixture-of-experts
student with its auxiliary terms. A run cut in stage 2 and resumed must replay the uninterrupted one exactly: the
EMA copy, the queues, the α warm-up and the experts all travel in the checkpoint as plain tensors."""

import numpy as np
import pytest
import torch

from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.prepare import prepare
from rebalance_torch.runlog import read_metrics
from rebalance_torch.trainer import train

SMALL_MODEL = {"vision_width": 32, "text_width": 32, "embed_dim": 16, "heads": 2, "vision_depth": 1,
               "text_depth": 1, "moe": {"experts": 4}}
MOE_WEIGHTS = {"moe_importance": 0.005, "moe_load": 0.005, "moe_local": 0.01, "moe_global": 0.01}
METHODS = TrainConfig(n_train=24, n_val=12, n_test=12, stage1_steps=4, stage2_steps=6, batch_size=8,
                      eval_every=3, k_test=4, model_overrides=SMALL_MODEL, lr=3e-3,
                      stage1_weights={"itc": 1, "itm": 2, **MOE_WEIGHTS},
                      weights={"itc": 1, "itm": 2, **MOE_WEIGHTS}, itc_momentum=0.9, itc_queue=12,
                      itc_alpha_warmup=0.5)


def _quiet(_message):
    pass


@pytest.fixture(scope="module")
def prepared():
    torch.set_num_threads(1)
    return prepare(METHODS, teachers=False, log=_quiet)


@pytest.fixture(scope="module")
def run(prepared, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("methods")
    train(METHODS, run_dir, prepared=prepared, progress=False, log=_quiet)
    return run_dir


def test_the_terms_and_alpha_are_logged(run):
    rows = [r for r in read_metrics(run) if "loss" in r]
    stage2 = [r for r in rows if r["stage"] == 2]
    for key in ("itc", "itm", *MOE_WEIGHTS, "itc_alpha"):
        assert all(np.isfinite(r[key]) for r in stage2), key
    # α warms up linearly over 3 steps: 0.4 * 9/3 capped -> 0.4 by the logged steps 6 (steps taken before it: 5)
    assert stage2[-1]["itc_alpha"] == pytest.approx(0.4)
    assert all("itc_alpha" not in r for r in rows if r["stage"] == 1)  # an option of stage 2's ITC


def test_the_checkpoint_holds_the_momentum_state(run):
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run, 2, "last"))  # weights_only=True inside
    objective = state["objective"]
    assert objective["momentum.steps"].item() == 6
    assert objective["momentum.image_queue"].shape == (12, 16)
    assert (objective["momentum.idx_queue"] >= 0).all()  # 6 steps x 8 rows filled the 12 slots
    ema = objective["momentum.model.vision_proj.weight"]
    assert not torch.equal(ema, state["student"]["vision_proj.weight"])  # an average, not a copy
    student, _, _ = ckpt.load_student(run)
    assert any(type(m).__name__ == "MoE" for m in student.modules())


def test_resume_replays_an_uninterrupted_run_exactly(prepared, run, tmp_path):
    part = tmp_path / "part"
    train(METHODS, part, prepared=prepared, progress=False, log=_quiet, stop_after=4)
    train(METHODS, part, prepared=prepared, progress=False, log=_quiet, resume=True, stop_after=2)  # stage 2, 2/6
    train(METHODS, part, prepared=prepared, progress=False, log=_quiet, resume=True)
    a = ckpt.load_checkpoint(ckpt.checkpoint_path(run, 2, "last"))
    b = ckpt.load_checkpoint(ckpt.checkpoint_path(part, 2, "last"))
    for key in ("student", "objective"):
        assert set(a[key]) == set(b[key])
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), (key, name)
    assert read_metrics(run) == read_metrics(part)


def test_config_checks_for_the_options():
    with pytest.raises(ValueError, match=r"itc_momentum must be None or a number in \(0, 1\)"):
        TrainConfig(itc_momentum=1.0)
    with pytest.raises(ValueError, match="itc_momentum is an option of ITC"):
        TrainConfig(itc_momentum=0.99, weights={"itm": 1})
    with pytest.raises(ValueError, match="itc_queue must be an integer >= 0"):
        TrainConfig(itc_queue=-1)
    with pytest.raises(ValueError, match=r"moe_local need a mixture-of-experts student"):
        TrainConfig(weights={"itc": 1, "moe_local": 0.1})
