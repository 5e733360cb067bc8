import json
import os

import pytest
import torch

from rebalance.ablate import CONDITIONS, REMEDIES, _pipeline, paired_table, run_ablation, table_markdown
from rebalance_torch.config import BASELINE_WEIGHTS, OFFICIAL_WEIGHTS
from tests.rebalance_torch.test_train import TINY


def test_paired_differences_are_taken_seed_by_seed():
    results = {"baseline": {0: {"cos_r_mean": 10.0, "attr_i2i@10": 50.0}, 1: {"cos_r_mean": 20.0, "attr_i2i@10": 40.0}},
               "full": {0: {"cos_r_mean": 11.0, "attr_i2i@10": 55.0}, 1: {"cos_r_mean": 23.0, "attr_i2i@10": 41.0}}}
    table = paired_table(results)
    assert table["baseline"]["cos_r_mean"] == (15.0, pytest.approx(7.0710678))
    mean, std = table["diff"]["full"]["cos_r_mean"]
    assert mean == 2.0 and std == pytest.approx(1.4142136)  # unpaired spread would be ~8.5
    assert table["diff"]["full"]["attr_i2i@10"][0] == 3.0
    md = table_markdown(table)
    assert "| full − baseline | +2.00 ± 1.41 | +3.00 ± 2.83 |" in md
    assert "| baseline (absolute) | 15.00 ± 7.07 | 45.00 ± 7.07 |" in md


def test_the_conditions_cover_the_paper_ablation():
    assert CONDITIONS["baseline"]["weights"] == BASELINE_WEIGHTS
    assert CONDITIONS["full"]["weights"] == OFFICIAL_WEIGHTS
    assert CONDITIONS["full, KD on [v,t]"]["student_relation"] == "projected"
    assert set(CONDITIONS["+IIC,TTC"]["weights"]) == {"itc", "itm", "iic", "ttc"}
    assert set(CONDITIONS["+KD"]["weights"]) == {"itc", "itm", "kd", "kdi", "kdt"}


def test_the_remedies_are_the_official_objective_with_one_change_each():
    from rebalance_torch.config import OFFICIAL_OBJECTIVE, TrainConfig

    official = TrainConfig().replace(**REMEDIES["full"])
    assert official == TrainConfig() and REMEDIES["baseline"]["weights"] == BASELINE_WEIGHTS
    for name, changes in REMEDIES.items():
        if name in ("baseline", "full"):
            continue
        changed = {k for k, v in changes.items() if OFFICIAL_OBJECTIVE[k] != v}
        assert len(changed) == 1, (name, changed)
        TrainConfig(**changes)   # a valid config


def test_the_stage1_rows_are_stage_2_minus_stage_1():
    results = {"stage 1": {0: {"cos_r_mean": 9.0}, 1: {"cos_r_mean": 18.0}},
               "baseline": {0: {"cos_r_mean": 10.0}, 1: {"cos_r_mean": 20.0}},
               "full": {0: {"cos_r_mean": 11.0}, 1: {"cos_r_mean": 23.0}}}
    table = paired_table(results, against="stage 1")
    assert table["baseline"]["cos_r_mean"][0] == 13.5
    assert table["diff"]["baseline"]["cos_r_mean"][0] == 1.5 and table["diff"]["full"]["cos_r_mean"][0] == 3.5


def test_every_condition_of_a_seed_starts_from_the_same_stage1(tmp_path):
    torch.set_num_threads(1)
    conditions = {"baseline": CONDITIONS["baseline"], "full": CONDITIONS["full"]}
    lines = []
    record = run_ablation("balanced", seeds=2, jobs=1, out=tmp_path, base=TINY, conditions=conditions,
                          log=lines.append)
    assert set(record["results"]) == {"stage 1", "baseline", "full"} and set(record["results"]["full"]) == {0, 1}
    # every row against stage 1 too, and the same tables on the validation split
    assert set(record["table"]["stage1"]["diff"]) == {"baseline", "full"}
    for seed in (0, 1):
        assert record["table"]["stage1"]["diff"]["full"]["cos_r_mean"][0] == pytest.approx(
            record["table"]["diff"]["full"]["cos_r_mean"][0] + record["table"]["stage1"]["diff"]["baseline"][
                "cos_r_mean"][0])
        assert (tmp_path / f"seed{seed}" / "eval-val.json").is_file()
    assert set(record["table_val"]["diff"]) == {"full"}
    assert record["results_val"]["full"][0] != record["results"]["full"][0]
    assert "| full − stage 1 |" in (tmp_path / "ablation.md").read_text()
    assert "| baseline − full |" in (tmp_path / "ablation.md").read_text()   # what a change of "full" does
    assert record["table"]["full"]["diff"]["baseline"]["cos_r_mean"][0] == pytest.approx(
        -record["table"]["diff"]["full"]["cos_r_mean"][0])
    assert "## Validation split" in (tmp_path / "ablation.md").read_text()
    for seed in (0, 1):
        stage1 = tmp_path / f"seed{seed}" / "checkpoints" / "stage1-best.pt"
        for name in ("baseline", "full"):
            log = (tmp_path / f"seed{seed}" / name / "log.txt").read_text()
            assert f"seed {seed}: stage 2 — {name}: starting from {stage1}" in log
            config = json.loads((tmp_path / f"seed{seed}" / name / "config.json").read_text())
            assert config["seed"] == seed and config["preset"] == "balanced"
    assert (tmp_path / "ablation.md").is_file() and (tmp_path / "plots" / "ablation.png").is_file()
    assert (tmp_path / "ablation.md").read_text().startswith("# Ablate: balanced, 2 seeds")  # the job, not a condition
    assert lines[-1].startswith("ablate balanced: ")
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert saved["table"]["diff"]["full"]["cos_r_mean"][0] == pytest.approx(
        record["table"]["diff"]["full"]["cos_r_mean"][0])
    # A second call reuses every finished condition instead of training again (and measures the terms' pull).
    again = run_ablation("balanced", seeds=2, jobs=1, out=tmp_path, base=TINY, conditions=conditions,
                         log=lines.append, gradients=True)
    assert json.loads(json.dumps(again["table"])) == json.loads(json.dumps(record["table"]))
    pull = again["start_gradients"][1]
    assert set(pull) == {"itc", "itm", "iic", "ttc", "kd", "kdi", "kdt"}
    assert pull["itc"]["cos_itc"] == pytest.approx(1.0, abs=1e-4) and pull["kd"]["norm"] > 0
    assert pull["kdi"]["norm"] == 0.0   # KDI and KDT reach λ and τ2, not the student
    assert "Stage 2's start, the official objective" in (tmp_path / "ablation.md").read_text()


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="baseline"):
        run_ablation("balanced", seeds=1, out=tmp_path, base=TINY, conditions={"full": CONDITIONS["full"]})
    with pytest.raises(ValueError, match="preset"):
        run_ablation("no-such-preset", seeds=1, out=tmp_path, base=TINY)
    with pytest.raises(ValueError, match="seeds"):
        run_ablation("balanced", seeds=0, out=tmp_path, base=TINY)


def test_conditions_follow_their_seed_stage1_in_spawned_processes():
    stage1 = {0: (os.getpid,), 1: None}  # seed 1's stage 1 was done earlier
    conditions = {0: [(("a", 0), (os.getpid,)), (("b", 0), (os.getpid,))], 1: [(("a", 1), (os.getpid,))]}
    pids = _pipeline(stage1, conditions, jobs=2, log=print)
    assert set(pids) == {("stage 1", 0), ("a", 0), ("b", 0), ("a", 1)} and os.getpid() not in pids.values()
    assert set(_pipeline(stage1, conditions, jobs=1, log=print).values()) == {os.getpid()}
