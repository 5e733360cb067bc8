import pytest

from rebalance.report import convergence, convergence_caution, train_and_report
from rebalance_torch.config import TrainConfig

SMALL_MODEL = {"vision_width": 32, "text_width": 32, "embed_dim": 16, "heads": 2, "vision_depth": 1,
               "text_depth": 1}
TINY = TrainConfig(n_train=16, n_val=8, n_test=8, stage1_steps=4, stage2_steps=4, batch_size=8, eval_every=2,
                   k_test=4, teacher_epochs=1, model_overrides=SMALL_MODEL)


@pytest.mark.slow
def test_a_reported_run_holds_its_report_and_figures(tmp_path):
    summary = train_and_report(TINY, tmp_path / "run", progress=False, log=lambda _m: None)
    run_dir = tmp_path / "run"
    for name in ("report.md", "plots/traces.png", "plots/relations.png", "eval.json"):
        assert (run_dir / name).is_file(), name
    report = (run_dir / "report.md").read_text()
    assert "## Test split" in report and "Parameters:" in report and "![traces](plots/traces.png)" in report
    assert f"{summary['test']['cos_r_mean']:.2f}" in report
    assert report.count("![relations]") == 1  # each figure once


def _checks(*values, stage=1, every=125):
    return [{"stage": stage, "step": every * (i + 1), "val": {"cos_r_mean": v}} for i, v in enumerate(values)]


def test_convergence_reads_the_checks_of_the_last_fifth_from_the_check_before_it():
    # 1000 steps checked every 125: the tail starts at the check of step 750 (the last one at or before 800)
    moving = convergence(_checks(10, 20, 30, 40, 50, 74.5, 74.8, 75.2), 1, 1000)
    assert moving["from_step"] == 750 and moving["to_step"] == 1000
    assert moving["range"] == pytest.approx(0.7) and moving["rise"] == pytest.approx(0.7) and not moving["converged"]
    assert convergence_caution("stage 1", moving) and "not converged" in convergence_caution("stage 1", moving)[0]
    settled = convergence(_checks(10, 20, 30, 40, 50, 75.0, 75.4, 75.1), 1, 1000)
    assert settled["converged"] and convergence_caution("stage 1", settled) == []
    # other stages' rows and runs with fewer than two checks say nothing
    assert convergence(_checks(1, 2, stage=2), 1, 250) is None and convergence(_checks(5), 1, 125) is None
    assert convergence_caution("stage 1", None) == []
