"""Mind the Gap on the student: `rebalance gap` on a tiny run (both new loss options trained through the CLI),
the cone at initialisation and the τ sweep helper."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rebalance import gap as gap_app
from rebalance.cli.main import cli
from tests.rebalance_torch.test_train import TINY


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gap")
    config = folder / "tiny.json"
    TINY.save(config)
    out = folder / "run"
    result = CliRunner().invoke(cli, ["train", "--config", str(config), "--out", str(out), "--stage2-steps", "3",
                                      "--weights", "gcl=1,itm=2,m2mix=0.1", "--mix-beta", "0.2", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"uni_r_mean", "uni_attr_it2it@10", "alignment_relative", "uniformity_joint"} <= set(summary["test"])
    return out


def test_gap_command_writes_the_vector_the_shift_curve_and_the_cone(run):
    result = CliRunner().invoke(cli, ["gap", "--run", str(run), "--cone", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    vector = np.load(run / "gap" / "gap_vector.npy")
    assert np.linalg.norm(vector) == pytest.approx(report["modality_gap"], rel=1e-5)  # float32 file
    assert set(report["shift_loss_minimum_at_gap"]) == {f"{t:g}" for t in gap_app.SHIFT_TAUS}
    for name in ("shift.png", "cone.png", "gap.json"):
        assert (run / "gap" / name).is_file()
    cone = report["cone"]
    assert cone["random_mlp"]["relu"][-1] > 0.9 > cone["random_mlp"]["linear"][-1]
    assert len(cone["student_at_init"]["mean_cosine_image"]) == 3


def test_tau_sweep_pins_tau_and_tracks_the_gap(tmp_path):
    config = TINY.replace(stage2_steps=0)
    sweep = gap_app.tau_sweep(config, (0.05, 0.5), tmp_path, segment=3, log=lambda _m: None)
    assert sweep["steps"] == [3, 6] and len(sweep["gap"]) == 2 and all(len(g) == 2 for g in sweep["gap"])
    rows = [json.loads(line) for line in (tmp_path / "tau-0.5" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["tau"] == pytest.approx(0.5, rel=gap_app.TAU_PIN) for r in rows if "tau" in r)
    assert sweep["final"][0]["shift"]["loss"].shape[0] == 1
    gap_app.plot_tau_sweep(sweep, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
