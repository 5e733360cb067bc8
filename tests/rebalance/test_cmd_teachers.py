import json

import numpy as np
import pytest
from click.testing import CliRunner

from rebalance.cli.main import cli
from rebalance_ref.karpathy import write_dataset
from rebalance_ref.shapes import make_splits


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("data"), make_splits("text-poor", 64, 8, 16, seed=0))


@pytest.fixture(scope="module")
def real_style_dir(tmp_path_factory):
    # the same scenes written without their attributes, as real image-caption data would be
    splits = make_splits("balanced", 64, 8, 16, seed=1)
    for split in splits.values():
        split.attributes = None
        split.canonical = None
    return write_dataset(tmp_path_factory.mktemp("real"), splits)


def test_teachers_writes_features_and_report_as_json(data_dir, tmp_path):
    out = tmp_path / "teachers"
    result = CliRunner().invoke(cli, ["teachers", "--data", str(data_dir), "--out", str(out), "--epochs", "1",
                                      "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["features"]["train_image"] == [64 * 5, 128]
    assert summary["features"]["test_text"] == [16 * 5, 128]
    assert summary["report"]["image_teacher"]["kind"] == "supervised"
    assert np.load(out / "train_text.npy").shape == (64 * 5, 128)
    assert json.loads((out / "report.json").read_text())["split"] == "test"


def test_supervised_on_data_without_attributes_says_to_use_ssl(real_style_dir, tmp_path):
    result = CliRunner().invoke(cli, ["teachers", "--data", str(real_style_dir), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert "--image-teacher ssl" in result.output
    ok = CliRunner().invoke(cli, ["teachers", "--data", str(real_style_dir), "--out", str(tmp_path / "t"),
                                  "--image-teacher", "ssl", "--epochs", "1"], catch_exceptions=False)
    assert ok.exit_code == 0, ok.output
    assert "train_image.npy (320, 128)" in ok.output
    report = json.loads((tmp_path / "t" / "report.json").read_text())
    assert report["image_teacher"]["kind"] == "ssl"
    assert set(report["image"]["beats_baseline"]) == {"rouge"}  # no attributes: ROUGE-L relevance only


def test_missing_data_folder_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["teachers", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert "--data" in result.output


def test_teachers_asks_for_force_before_replacing_features(data_dir, tmp_path):
    out = tmp_path / "teachers"
    out.mkdir()
    (out / "train_image.npy").write_bytes(b"mine")
    result = CliRunner().invoke(cli, ["teachers", "--data", str(data_dir), "--out", str(out), "--epochs", "1"])
    assert result.exit_code == 2 and "--force" in result.output
    assert (out / "train_image.npy").read_bytes() == b"mine"


def test_a_folder_without_metadata_names_the_image_size_option(data_dir, tmp_path):
    import shutil

    plain = shutil.copytree(data_dir, tmp_path / "plain")
    (plain / "metadata.json").unlink()  # a Karpathy-style folder: JSON files and images only
    args = ["teachers", "--data", str(plain), "--image-teacher", "ssl", "--epochs", "1"]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "--image-size" in result.output
    odd = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b"), "--image-size", "30"])
    assert odd.exit_code == 2 and "multiple of 8" in odd.output
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "c"), "--image-size", "32", "--json"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "train_image.npy").is_file()


@pytest.mark.parametrize("command", [["teachers", "--data", "d", "--out", "o"], ["data", "make", "--out", "o"],
                                     ["bench", "retrieval", "--skip-encode"], ["demo", "--fast"]])
def test_a_negative_seed_is_a_clear_usage_error(command):
    result = CliRunner().invoke(cli, [*command, "--seed", "-1"])
    assert result.exit_code == 2 and "'--seed'" in result.output and "-1" in result.output
