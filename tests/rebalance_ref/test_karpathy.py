import json

import numpy as np
import pytest
from PIL import Image

from rebalance_ref.karpathy import DataError, read_dataset, read_metadata, read_split, write_dataset
from rebalance_ref.shapes import make_splits


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    splits = make_splits("text-poor", 4, 2, 3, seed=1)
    write_dataset(out, splits, extra={"preset": "text-poor", "seed": 1})
    return out, splits


def test_write_then_read_round_trips_bytes_and_metadata(folder):
    out, splits = folder
    back = read_dataset(out)
    assert set(back) == {"train", "val", "test"}
    for split, data in splits.items():
        assert back[split].images.tobytes() == data.images.tobytes()  # PNG is lossless
        assert back[split].captions == data.captions and back[split].names == data.names
        assert back[split].attributes == data.attributes and back[split].canonical == data.canonical
    assert read_metadata(out)["preset"] == "text-poor"
    rows = json.loads((out / "train.json").read_text())
    assert len(rows) == 4 * 5 and set(rows[0]) == {"image", "caption", "image_id"}
    assert isinstance(rows[0]["caption"], str)
    test_rows = json.loads((out / "test.json").read_text())
    assert len(test_rows) == 3 and len(test_rows[0]["caption"]) == 5
    assert read_dataset(out, image_size=16)["test"].images.shape == (3, 16, 16, 3)


def test_reads_a_folder_without_metadata(tmp_path, folder):
    out, splits = folder
    (tmp_path / "images").symlink_to(out / "images")
    (tmp_path / "test.json").write_text((out / "test.json").read_text())
    back = read_dataset(tmp_path, image_size=32)
    assert set(back) == {"test"} and back["test"].attributes is None
    assert back["test"].images.tobytes() == splits["test"].images.tobytes()


def _fixture(tmp_path, rows, size=(20, 12), mode="RGB"):
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for name in ("a.jpg", "sub/b.png"):
        Image.new("RGB", size, (10, 200, 30)).convert(mode).save(root / name)
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(rows))
    return path, root


FIVE = ["one", "two", "three", "four", "five"]


def test_train_rows_grouped_by_image_id_in_first_seen_order(tmp_path):
    rows = [{"image": "sub/b.png", "caption": "b 0", "image_id": 7},
            {"image": "a.jpg", "caption": "a 0", "image_id": 3},
            {"image": "sub/b.png", "caption": "b 1", "image_id": 7}]
    path, root = _fixture(tmp_path, rows, mode="L")
    data = read_split(path, root, "train", 8)
    assert data.names == ["sub/b.png", "a.jpg"] and data.captions == [["b 0", "b 1"], ["a 0"]]
    assert data.images.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(data.pairs()[0], [0, 0, 1])


def test_extra_captions_are_cut_with_a_warning(tmp_path):
    path, root = _fixture(tmp_path, [{"image": "a.jpg", "caption": [*FIVE, "six"]}])
    with pytest.warns(UserWarning, match="first 5"):
        data = read_split(path, root, "test", 8)
    assert data.captions == [FIVE]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"image": "a.jpg", "caption": ["one", "", "three", "four", "five"]}], r"row 0: caption 1 is empty"),
        ([{"image": "a.jpg", "caption": FIVE}, {"image": "missing.png", "caption": FIVE}],
         r"row 1: image file not found"),
        ([{"image": "../a.jpg", "caption": FIVE}], r"row 0: image path '../a.jpg' escapes the image root"),
        ([{"image": "/etc/passwd", "caption": FIVE}], r"row 0: image path '/etc/passwd' escapes"),
        ([{"image": "a.jpg", "caption": FIVE}, {"image": "sub/b.png", "caption": FIVE[:3]}],
         r"row 1: image 'sub/b.png' has 3 captions, expected 5"),
        ([{"image": "a.jpg"}], r"row 0: missing 'caption'"),
        ([["a.jpg", "x"]], r"row 0: expected an object"),
        ({"image": "a.jpg"}, r"expected a non-empty JSON list"),
    ],
)
def test_bad_input_names_file_and_row(tmp_path, rows, message):
    path, root = _fixture(tmp_path, rows)
    with pytest.raises(DataError, match=message) as info:
        read_split(path, root, "test", 8)
    assert "ann.json" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_malformed_json_and_unreadable_image(tmp_path):
    path, root = _fixture(tmp_path, [])
    path.write_text('[{"image": "a.jpg", "caption": ["x"]},\n {oops}]')
    with pytest.raises(DataError, match=r"ann.json: malformed JSON at line 2"):
        read_split(path, root, "test", 8)
    (root / "broken.png").write_bytes(b"not an image")
    path.write_text(json.dumps([{"image": "broken.png", "caption": FIVE}]))
    with pytest.raises(DataError, match=r"ann.json row 0: unreadable image .*broken.png"):
        read_split(path, root, "test", 8)


def test_short_captions_can_be_skipped_with_a_warning(tmp_path):
    rows = [{"image": "a.jpg", "caption": FIVE}, {"image": "sub/b.png", "caption": FIVE[:2]}]
    path, root = _fixture(tmp_path, rows)
    with pytest.warns(UserWarning, match="dropped 1 image"):
        data = read_split(path, root, "test", 8, on_short="skip")
    assert data.names == ["a.jpg"]
    # training images may have any number of captions
    assert read_split(path, root, "train", 8).captions[1] == FIVE[:2]


def test_bad_metadata_is_named(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="metadata.json: not a rebalance data folder"):
        read_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope")
