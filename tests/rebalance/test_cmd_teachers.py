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
