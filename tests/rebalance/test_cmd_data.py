import json

from click.testing import CliRunner
from PIL import Image

from rebalance.cli.main import cli
from rebalance_ref.karpathy import read_dataset
from rebalance_ref.shapes import make_splits


def _make(out, *extra):
    args = ["data", "make", "--preset", "image-poor", "--n-train", "3", "--n-val", "2", "--n-test", "2", "--seed",
            "4", "--out", str(out), *extra]
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_make_writes_the_same_world_as_the_library(tmp_path):
    result = _make(tmp_path / "d", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["n_train"] == 3 and summary["n_train_captions"] == 15
    back = read_dataset(tmp_path / "d")
    expected = make_splits("image-poor", 3, 2, 2, seed=4)
    for split in ("train", "val", "test"):
        assert back[split].images.tobytes() == expected[split].images.tobytes()
        assert back[split].captions == expected[split].captions
    meta = json.loads((tmp_path / "d" / "metadata.json").read_text())
    assert meta["preset"] == "image-poor" and meta["knobs"]["pixel_noise"] > 0


def test_make_refuses_a_non_empty_folder_without_force(tmp_path):
    assert _make(tmp_path / "d").exit_code == 0
    again = _make(tmp_path / "d")
    assert again.exit_code != 0 and "--force" in again.output
    assert _make(tmp_path / "d", "--force").exit_code == 0
    bad = CliRunner().invoke(cli, ["data", "make", "--preset", "nope", "--out", str(tmp_path / "e")])
    assert bad.exit_code != 0 and "nope" in bad.output


def test_show_writes_a_png_grid(tmp_path):
    _make(tmp_path / "d")
    result = CliRunner().invoke(cli, ["data", "show", str(tmp_path / "d"), "--split", "val", "--n", "2", "--out",
                                      str(tmp_path / "grid.png")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "grid.png") as im:
        assert im.format == "PNG" and im.width > 100


def test_show_reports_bad_data_cleanly(tmp_path):
    _make(tmp_path / "d")
    (tmp_path / "d" / "val.json").write_text("[{broken")
    result = CliRunner().invoke(cli, ["data", "show", str(tmp_path / "d"), "--split", "val", "--out",
                                      str(tmp_path / "g.png")])
    assert result.exit_code != 0 and "val.json: malformed JSON" in result.output
    assert "Traceback" not in result.output
