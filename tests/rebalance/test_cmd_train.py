import json

import pytest
from click.testing import CliRunner

from rebalance.cli.main import cli
from tests.rebalance_torch.test_train import TINY


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "tiny.json"
    TINY.save(config)
    run = folder / "run"
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--out", str(run), "--stage2-steps", "3",
                                      "--recipe", "official", "--weights", "itc=1,itm=2,iic=1,kd=2",
                                      "--teacher-tau", "own", "--teacher-warmup", "0.34", "--teacher-scale", "0.5",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder, run, json.loads(result.stdout)


def test_train_writes_a_run_with_the_options_applied(trained):
    _, run, summary = trained
    config = json.loads((run / "config.json").read_text())
    assert config["stage2_steps"] == 3 and config["weights"] == {"itc": 1.0, "itm": 2.0, "iic": 1.0, "kd": 2.0}
    assert config["n_train"] == TINY.n_train  # from --config
    # the remedies' flags come from TrainConfig (names and choices), and override the recipe
    assert (config["teacher_tau"], config["teacher_warmup"], config["teacher_scale"]) == ("own", 0.34, 0.5)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("teacher_tau" in row for row in logged if row.get("stage") == 2)
    assert set(summary["test"]) >= {"cos_r_mean", "itm_r_mean", "attr_i2i@10", "rouge_t2it@50"}


def test_eval_reevaluates_the_best_checkpoint(trained):
    _, run, summary = trained
    result = CliRunner().invoke(cli, ["eval", "--run", str(run), "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == pytest.approx(summary["test"])
    text = CliRunner().invoke(cli, ["eval", "--run", str(run), "--which", "stage1-best", "--split", "val"],
                              catch_exceptions=False)
    assert text.exit_code == 0 and "stage1-best, val" in text.output


def test_resume_of_a_finished_run_does_no_more_training(trained):
    _, run, _ = trained
    result = CliRunner().invoke(cli, ["train", "--out", str(run), "--resume", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "already complete" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--weights", "bogus=1"], "unknown loss name 'bogus'"),
    (["--stages", "3"], "expected 1, 2 or 1,2"),
    (["--lr", "-1"], "lr must lie in"),
    (["--tau-clamp", "0.5,0.1"], "tau_clamp"),
    (["--teacher-tau", "separate"], "'separate' is not one of 'shared', 'own'"),
    (["--teacher-scale", "0"], "teacher_scale must lie in"),
    (["--teacher-warmup", "0.7", "--teacher-ramp", "0.7"], "teacher_warmup + teacher_ramp must be <= 1"),
    (["--recipe", "paper"], "'paper' is not one of 'official', 'rebalanced'"),
])
def test_bad_train_options_fail_with_a_clear_message(trained, args, message):
    folder, _, _ = trained
    result = CliRunner().invoke(cli, ["train", "--config", str(folder / "tiny.json"), "--out",
                                      str(folder / "bad")] + args, catch_exceptions=False)
    assert result.exit_code != 0 and message in result.output


def test_train_refuses_to_overwrite_a_run_without_resume(trained):
    folder, run, _ = trained
    result = CliRunner().invoke(cli, ["train", "--config", str(folder / "tiny.json"), "--out", str(run)],
                                catch_exceptions=False)
    assert result.exit_code == 1 and "--resume" in result.output


def test_demo_refuses_a_folder_that_holds_a_run(trained):
    _, run, _ = trained
    result = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(run)], catch_exceptions=False)
    assert result.exit_code == 1 and "already holds a run" in result.output


def test_ablate_runs_the_chosen_conditions_and_prints_the_paired_table(trained):
    folder, _, _ = trained
    out = folder / "ablate"
    result = CliRunner().invoke(cli, ["ablate", "--preset", "image-poor", "--seeds", "1", "--jobs", "1", "--config",
                                      str(folder / "tiny.json"), "--out", str(out), "--conditions",
                                      "baseline,projected", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table = json.loads(result.stdout)
    assert set(table["diff"]) == {"full, KD on [v,t]"}
    assert json.loads((out / "seed0" / "full_kd_on_v_t" / "config.json").read_text())["student_relation"] == \
        "projected"
    assert json.loads((out / "ablation.json").read_text())["preset"] == "image-poor"


def test_bench_train_reports_the_ratio_side_by_side(tmp_path):
    result = CliRunner().invoke(cli, ["bench", "train", "--batch-size", "8", "--repeats", "1", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["conditions"]["itc+itm"]["ratio_to_itc_itm"] == 1.0
    assert report["conditions"]["full (KD on z)"]["median_ms"] > 0
    missing = CliRunner().invoke(cli, ["bench", "train", "--repeats", "1", "--demo-run", str(tmp_path)],
                                 catch_exceptions=False)
    assert missing.exit_code == 2 and "not a demo run folder" in missing.output


def test_ablate_refuses_unknown_conditions(trained):
    folder, _, _ = trained
    result = CliRunner().invoke(cli, ["ablate", "--preset", "balanced", "--conditions", "full,magic"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and "including baseline" in result.output


def test_ablate_takes_the_terms_or_the_remedies_not_both(trained):
    result = CliRunner().invoke(cli, ["ablate", "--preset", "balanced", "--conditions", "baseline,full",
                                      "--remedies"], catch_exceptions=False)
    assert result.exit_code == 2 and "give one" in result.output


def test_python_m_rebalance_is_the_command_line():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rebalance", "train", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "rebalance train" in out and "--resume" in out and "--stage1-steps" in out
