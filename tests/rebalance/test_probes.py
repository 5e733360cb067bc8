"""The probes' application layer: AUROC, the object regions, the SAE fit, and both CLI commands on a tiny run."""

import json
from itertools import product

import numpy as np
import pytest
from click.testing import CliRunner

from rebalance import probes
from rebalance.cli.main import cli
from rebalance_ref.tolerances import ORACLE_RTOL

from .conftest import write_untrained_run


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder with a fresh (untrained) student's checkpoint on a small text-poor world."""
    root = tmp_path_factory.mktemp("probes") / "run"
    write_untrained_run(root, 8, 4, 24)
    return root


def test_auroc_is_the_pairwise_probability_with_ties_as_half():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((30, 3)), 1)  # many ties
    scores[:, 2] = 0.0  # a neuron that never fires
    labels = (rng.random((30, 2)) < 0.4).astype(float)
    got = probes.auroc(scores, labels)
    for j, k in product(range(3), range(2)):
        pos, neg = scores[labels[:, k] == 1, j], scores[labels[:, k] == 0, j]
        expected = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
        assert got[j, k] == pytest.approx(expected, rel=ORACLE_RTOL)
    assert np.all(got[2] == 0.5)
    assert np.isnan(probes.auroc(scores, np.ones((30, 1))))[0, 0]


def test_object_patches_cover_the_cell():
    assert list(probes.object_patches({"row": 0, "col": 0}, 32, 8)) == [0, 1, 4, 5]
    assert list(probes.object_patches({"row": 1, "col": 1}, 32, 8)) == [5, 6, 9, 10]
    assert list(probes.object_patches({"row": 2, "col": 2}, 32, 8)) == [10, 11, 14, 15]
    # 64 px, 8 x 8 patches: cell column 2 spans pixels 42.7-64, i.e. patch columns 5-7 (5 only in part)
    assert list(probes.object_patches({"row": 0, "col": 2}, 64, 8)) == [5, 6, 7, 13, 14, 15, 21, 22, 23]


def test_concept_targets_are_the_presence_groups():
    attributes = [[{"shape": "ring", "colour": "red", "size": "small", "row": 0, "col": 2}]]
    y, names = probes.concept_targets(attributes)
    assert len(names) == 6 + 7 + 2 + 9 and y.shape == (1, 24)
    assert sorted(n for n, on in zip(names, y[0], strict=True) if on) == ["cell:0,2", "colour:red", "shape:ring",
                                                                          "size:small"]


def test_fit_sae_lowers_the_loss_and_is_seeded():
    rng = np.random.default_rng(1)
    v = rng.standard_normal((64, 8))
    t = v + 0.3 * rng.standard_normal((64, 8))
    v, t = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (v, t))
    settings = probes.SaeSettings(width_factor=4, steps=60, batch=32, lr=1e-2)
    a, b = probes.fit_sae(v, t, settings), probes.fit_sae(v, t, settings)
    assert a["k"] == 4 and a["w_enc"].shape == (32, 8)
    assert np.mean(a["loss"][-5:]) < 0.5 * a["loss"][0]
    np.testing.assert_array_equal(a["w_enc"], b["w_enc"])
    codes = probes.sae_codes(v, a)
    assert codes.shape == (64, 32) and np.all((codes > 0).sum(axis=1) == 4)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="SaeSettings.steps"):
        probes.SaeSettings(steps=0)
    with pytest.raises(ValueError, match="InteractionSettings.reward"):
        probes.InteractionSettings(reward="dot")


@pytest.mark.slow
def test_probe_sae_command_writes_figures_and_numbers(run_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("probe", "sae", "--run", run_dir, "--run", run_dir, "--out", out, "--steps", "5",
                  "--width-factor", "2")
    assert result.exit_code == 0, result.output
    assert "neurons firing for images" in result.output
    data = json.loads((out / "sae.json").read_text())
    summary = data["run"]["summary"]
    assert summary["neurons"] == 2 * 128 and summary["k"] == 64
    assert set(summary["per_group"]) == set(probes.CONCEPT_GROUPS)
    assert all(0.0 <= r["image"] <= 1.0 for r in summary["per_attribute"].values())
    for name in ("sae_run.png", "sae_run-2.png", "sae_compare.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_probe_interactions_command_writes_heatmaps_and_the_check(run_dir, tmp_path):
    out = tmp_path / "out"
    result = _run("probe", "interactions", "--run", run_dir, "--out", out, "--pairs", "2", "--samples", "2")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "interactions_cosine.json").read_text())["run"]
    assert len(data["pairs"]) == 2
    words = data["pairs"][0]["words"]
    assert np.array(data["pairs"][0]["interactions"]).shape == (len(words), 16)
    assert np.all(np.array(data["pairs"][0]["stderr"]) >= 0)
    assert data["evaluations"] == sum(len(p["words"]) * 16 * 2 * 4 for p in data["pairs"])
    assert 0.0 <= data["check"]["random_region_rate"] <= 1.0
    assert (out / "interactions_cosine_run.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_names_a_run_without_a_checkpoint(tmp_path):
    result = CliRunner().invoke(cli, ["probe", "sae", "--run", str(tmp_path / "nothing")])
    assert result.exit_code == 1
    assert "does not exist" in result.output
