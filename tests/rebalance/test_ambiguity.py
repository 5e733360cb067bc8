"""`rebalance.ambiguity` and `rebalance data ambiguity`: the oracle report of a world, and the ITM label noise of a
tiny stage-1 run (its plumbing checked with match matrices whose answers are known)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rebalance import ambiguity as amb
from rebalance.cli.main import cli
from tests.rebalance_torch.test_train import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from rebalance_torch.trainer import train

    run_dir = tmp_path_factory.mktemp("ambiguity")
    train(TINY, run_dir, stages=(1,), progress=False, log=lambda _m: None, evaluate_test=False)
    return run_dir


def test_oracle_report_of_a_complete_world():
    report = amb.oracle_report("balanced", 10, 8, 6, seed=1, splits=("val", "test"))
    assert set(report) == {"val", "test"} and report["test"]["n_captions"] == 30
    for row in report.values():
        assert row["ambiguity"]["share_false_of_own"] == 0.0          # no word noise: true of its own image
        assert 0.0 < row["literal"]["r_mean"] <= 100.0 and 0.0 < row["bayes"]["r_mean"] <= 100.0
        # no object dropped: the own image is always among the exact-count images the Bayes oracle ranks first
        assert row["bayes"]["t2i_mean"] >= row["literal"]["t2i_mean"] - 1e-9
    with pytest.raises(ValueError, match="splits"):
        amb.oracle_report("balanced", 10, 8, 6, splits=("dev",))


@pytest.mark.parametrize("kind", ["all", "none", "own"])
def test_label_noise_counts_the_pairs_the_matches_call_true(run, monkeypatch, kind):
    real = amb.split_matches

    def fake(*args, **kwargs):
        out = real(*args, **kwargs)
        m = out["train"]
        made = {"all": np.ones_like(m.counts), "none": np.zeros_like(m.counts),
                "own": (np.arange(m.counts.shape[1])[None, :] == m.txt2img[:, None]).astype(np.int8)}[kind]
        return {"train": amb.SplitMatches(made, m.txt2img, m.n_mentions, m.n_objects)}

    monkeypatch.setattr(amb, "split_matches", fake)
    noise = amb.itm_label_noise(run, batches=4)
    expected = {"all": 100.0, "none": 0.0, "own": 0.0}[kind]          # the sampler never draws the own image
    for key in ("hard_text_to_image", "hard_image_to_text", "random_text_to_image", "random_image_to_text"):
        assert noise[key] == pytest.approx(expected)
    assert noise["batches"] == 4 and noise["batch_size"] == TINY.batch_size


def test_label_noise_on_the_real_world_and_the_command(run):
    noise = amb.itm_label_noise(run, batches=3)
    assert 0.0 <= noise["hard"] <= 100.0 and 0.0 <= noise["random"] <= 100.0
    result = CliRunner().invoke(cli, ["data", "ambiguity", "--run", str(run), "--batches", "3", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_train"] == TINY.n_train and set(report["oracle"]) == {"val", "test"}
    assert 0.0 <= report["itm_label_noise"]["train_ambiguity"]["share_ambiguous"] <= 100.0
    assert report["itm_label_noise"]["hard"] == pytest.approx(noise["hard"])   # same draws: seeded per step
    assert "run_test" not in report                                                # evaluate_test=False: no eval.json
    (run / "eval.json").write_text(json.dumps({"cos_r_mean": 10.0}))
    again = json.loads(CliRunner().invoke(cli, ["data", "ambiguity", "--run", str(run), "--batches", "1",
                                                "--json"], catch_exceptions=False).stdout)
    oracle = again["oracle"]["test"]
    assert again["run_test"]["cos_r_mean_of_bayes"] == pytest.approx(1000.0 / oracle["bayes"]["r_mean"])
    assert "itm_r_mean" not in again["run_test"]
    text = CliRunner().invoke(cli, ["data", "ambiguity", "--preset", "balanced", "--n-train", "12", "--n-val", "6",
                                    "--n-test", "6"], catch_exceptions=False)
    assert text.exit_code == 0 and "R-mean" in text.output and "test" in text.output
