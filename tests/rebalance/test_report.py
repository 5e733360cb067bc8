import pytest

from rebalance.report import train_and_report
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
