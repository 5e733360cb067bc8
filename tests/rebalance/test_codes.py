"""Binary codes for a run: recall from ranked lists, the head trainer, and `rebalance codes train/eval`, `export`,
`index`, `search --codes` on a tiny run."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rebalance import codes
from rebalance.cli.main import cli
from rebalance_ref.metrics import retrieval_recall

from .conftest import write_untrained_run


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """A run folder with a fresh (untrained) student's checkpoint on a small text-poor world, and a data folder
    holding its test split."""
    from rebalance_ref.karpathy import write_dataset

    root = tmp_path_factory.mktemp("codes")
    splits = write_untrained_run(root / "run", 16, 8, 12)
    write_dataset(root / "data", {"test": splits["test"]})
    return root


@pytest.fixture(scope="module")
def trained(run_and_data):
    result = _run("codes", "train", "--run", run_and_data / "run", "--bits", "16,32", "--epochs", 3, "--json")
    assert result.exit_code == 0, result.output
    return run_and_data, json.loads(result.output)


def test_recall_from_rows_equals_the_metrics_recall_on_float_scores():
    rng = np.random.default_rng(0)
    v, t = _unit(rng.standard_normal((20, 8))), _unit(rng.standard_normal((60, 8)))
    txt2img = np.repeat(np.arange(20), 3)
    got = codes.float_recall(v, t, txt2img)
    want = retrieval_recall(v @ t.T, txt2img)
    for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "r_mean"):
        assert got[key] == pytest.approx(want[key], abs=1e-9), key


def test_a_full_shortlist_gives_the_float_recall_and_hamming_only_differs():
    rng = np.random.default_rng(1)
    v, t = _unit(rng.standard_normal((30, 16))), _unit(rng.standard_normal((90, 16)))
    txt2img = np.repeat(np.arange(30), 3)
    t = _unit(t + 1.5 * v[txt2img])  # captions near their image
    codes_v, codes_t = codes.pack_codes(v[:, :8]), codes.pack_codes(t[:, :8])  # 8 crude bits: signs of 8 dims
    full = codes.code_recall(v, t, txt2img, codes_v, codes_t, shortlist=90)
    assert full == pytest.approx(codes.float_recall(v, t, txt2img))
    assert codes.code_recall(v, t, txt2img, codes_v, codes_t)["r_mean"] < full["r_mean"]


def test_probe_scores_order_by_hamming_then_index():
    q = np.array([[0b11110000]], np.uint8)
    g = np.array([[0b11110000], [0b11110001], [0b00001111], [0b11110000]], np.uint8)
    scores = codes.probe_scores_codes(np.zeros((1, 2)), np.zeros((4, 2)), q, g, None)
    assert np.argsort(-scores[0], kind="stable").tolist() == [0, 3, 1, 2]
    short = codes.probe_scores_codes(np.ones((1, 2)), np.arange(8.0).reshape(4, 2), q, g, 2)
    assert np.isinf(short[0, [1, 2]]).all() and short[0, 3] > short[0, 0]


def test_the_heads_fit_and_keep_the_best_validation_epoch():
    from rebalance_torch.hash_heads import HashSettings, fit_code_heads

    rng = np.random.default_rng(2)
    v = _unit(rng.standard_normal((40, 8)))
    t = _unit(v + 0.3 * rng.standard_normal((40, 8)))
    scores = iter([0.5, 2.0, 1.0])
    heads, history = fit_code_heads(v, t, np.arange(40), HashSettings(bits=16, epochs=3, batch=16),
                                    score=lambda _: next(scores))
    assert history["best_epoch"] == 1 and history["score"] == [0.5, 2.0, 1.0]
    assert float(heads.image.alpha) == pytest.approx(np.sqrt(2))  # the kept epoch's alpha
    assert len(history["loss"]) == 3 and all(np.isfinite(history["loss"]))


def test_training_lowers_the_loss_and_a_shared_head_is_one_module():
    from rebalance_torch.hash_heads import CodeHeads, HashSettings, fit_code_heads

    rng = np.random.default_rng(3)
    v = _unit(rng.standard_normal((64, 8)))
    t = _unit(v + 0.3 * rng.standard_normal((64, 8)))
    _, history = fit_code_heads(v, t, np.arange(64), HashSettings(bits=16, epochs=8, batch=32))
    assert history["loss"][-1] < history["loss"][0]
    shared = CodeHeads(8, 16, shared=True)
    assert shared.image is shared.text and len(list(shared.parameters())) == 3
    with pytest.raises(ValueError, match="bits: expected a multiple of 8"):
        CodeHeads(8, 12, shared=False)


def test_codes_train_writes_selected_heads(trained):
    root, out = trained
    assert set(out) == {"16", "32"}
    for width, row in out.items():
        assert row["chosen"] in ("separate", "shared")
        assert (root / "run" / "codes" / f"heads-{width}.pt").is_file()
        assert 0 <= row[row["chosen"]]["best_epoch"] < 3
    summary = codes.read_train_summary(root / "run")
    assert summary["selection"].startswith("validation")


def test_codes_eval_measures_float_hamming_and_shortlists(trained):
    root, _ = trained
    result = _run("codes", "eval", "--run", root / "run", "--shortlist", "5,12", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["split"] == "test" and out["images"] == 12 and set(out["codes"]) == {"16", "32"}
    assert out["float_bytes_per_item"] == 4 * 128 and out["codes"]["32"]["bytes_per_item"] == 4
    # a shortlist of every image re-ranks t2i exactly: its t2i recall is the float one
    for width in ("16", "32"):
        full = out["codes"][width]["shortlist"]["12"]
        for key in ("t2i_r1", "t2i_r5", "t2i_r10"):
            assert full[key] == pytest.approx(out["float"][key])
        assert 0 <= out["codes"][width]["hamming"]["probe_p5"] <= 1
    assert (root / "run" / "codes" / "eval-test.json").is_file()
    text = _run("codes", "eval", "--run", root / "run", "--shortlist", "5", "--bits", "16").output
    assert "| float (exact cosine) | 512 |" in text and "16 bits, Hamming top 5 → exact re-rank" in text


def test_codes_eval_refuses_heads_of_another_checkpoint(trained):
    root, _ = trained
    result = CliRunner().invoke(cli, ["codes", "eval", "--run", str(root / "run"), "--which", "last"])
    assert result.exit_code != 0 and "trained on checkpoint 'best'" in result.output


def test_a_second_training_keeps_the_record_of_earlier_widths(trained, tmp_path):
    import shutil

    root, _ = trained
    run = shutil.copytree(root / "run", tmp_path / "run")
    result = _run("codes", "train", "--run", run, "--bits", "8", "--epochs", 1, "--heads", "shared", "--json")
    assert result.exit_code == 0, result.output
    assert set(codes.read_train_summary(run)["bits"]) == {"8", "16", "32"}


def test_codes_eval_needs_trained_heads(run_and_data, tmp_path):
    import shutil

    bare = shutil.copytree(run_and_data / "run", tmp_path / "run", ignore=shutil.ignore_patterns("codes"))
    result = CliRunner().invoke(cli, ["codes", "eval", "--run", str(bare)])
    assert result.exit_code != 0 and "has no trained hash heads" in result.output


def test_codes_train_refuses_bad_widths(run_and_data):
    result = CliRunner().invoke(cli, ["codes", "train", "--run", str(run_and_data / "run"), "--bits", "12"])
    assert result.exit_code != 0 and "multiples of 8" in result.output
    result = CliRunner().invoke(cli, ["codes", "train", "--run", str(run_and_data / "run"), "--heads", "twin"])
    assert result.exit_code != 0 and "head kinds" in result.output


def test_export_index_and_search_by_codes(trained):
    root, _ = trained
    result = _run("export", "--run", root / "run", "--out", root / "bundle", "--verify", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["codes"]["bits"] == 32 and out["verify"]["ok"] and out["verify"]["codes"]["bits"] == 32
    result = _run("index", "--bundle", root / "bundle", "--data", root / "data", "--json")
    assert json.loads(result.output)["code_bits"] == 32
    query = "a red circle"
    for extra, method in (([], "hamming"), (["--shortlist", 6], "hamming+exact")):
        result = _run("search", "--bundle", root / "bundle", "--text", query, "--k", 3, "--codes", *extra, "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["search"] == {"method": method, "bits": 32, "shortlist": extra[1] if extra else None}
        assert len(out["hits"]) == 3 and all("hamming" in h for h in out["hits"])
    exact = json.loads(_run("search", "--bundle", root / "bundle", "--text", query, "--json").output)
    assert exact["search"]["method"] == "exact" and all("hamming" not in h for h in exact["hits"])
    assert "hamming" in _run("search", "--bundle", root / "bundle", "--text", query, "--codes").output


def test_export_code_options(trained, tmp_path):
    root, _ = trained
    result = _run("export", "--run", root / "run", "--out", tmp_path / "b16", "--code-bits", 16, "--json")
    assert json.loads(result.output)["codes"]["bits"] == 16
    result = _run("export", "--run", root / "run", "--out", tmp_path / "none", "--no-codes", "--json")
    assert json.loads(result.output)["codes"] is None
    result = CliRunner().invoke(cli, ["export", "--run", str(root / "run"), "--out", str(tmp_path / "b"),
                                      "--code-bits", "24"])
    assert result.exit_code != 0 and "has no hash heads of 24 bits (trained: 16, 32)" in result.output
    result = CliRunner().invoke(cli, ["export", "--run", str(root / "run"), "--out", str(tmp_path / "b"),
                                      "--code-bits", "16", "--no-codes"])
    assert result.exit_code != 0 and "not both" in result.output
    result = CliRunner().invoke(cli, ["export", "--run", str(root / "run"), "--out", str(tmp_path / "b"),
                                      "--which", "last"])
    assert result.exit_code != 0 and "trained on checkpoint 'best'" in result.output


def test_search_by_codes_on_a_bundle_without_them_says_so(run_and_data, tmp_path):
    root = run_and_data
    _run("export", "--run", root / "run", "--out", tmp_path / "plain", "--no-codes")
    _run("index", "--bundle", tmp_path / "plain", "--data", root / "data")
    result = CliRunner().invoke(cli, ["search", "--bundle", str(tmp_path / "plain"), "--text", "a red circle",
                                      "--codes"])
    assert result.exit_code != 0 and "has no code graphs" in result.output
    result = CliRunner().invoke(cli, ["search", "--bundle", str(tmp_path / "plain"), "--text", "a red circle",
                                      "--shortlist", "3"])
    assert result.exit_code != 0 and "add --codes" in result.output


def test_a_frozen_gate_stays_half_open():
    from rebalance_torch.hash_heads import HashSettings, fit_code_heads

    rng = np.random.default_rng(4)
    v = _unit(rng.standard_normal((32, 8)))
    t = _unit(v + 0.3 * rng.standard_normal((32, 8)))
    frozen, _ = fit_code_heads(v, t, np.arange(32), HashSettings(bits=8, epochs=2, batch=16, gate=False))
    trained, _ = fit_code_heads(v, t, np.arange(32), HashSettings(bits=8, epochs=2, batch=16))
    assert float(frozen.image.w_gate.detach().abs().max()) == 0.0
    assert float(frozen.text.b_gate.detach().abs().max()) == 0.0
    assert float(trained.image.w_gate.detach().abs().max()) > 0.0
