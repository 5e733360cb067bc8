import json
import shutil

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
    shutil.copytree(out / "images", tmp_path / "images")
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
        ([{"image": "../a.jpg", "caption": FIVE}], r"row 0: image path '../a.jpg' escapes .*imgs \(it leads to"),
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
    with pytest.raises(DataError, match=r"ann.json row 0: \S*broken.png: cannot read image"):
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


# --- hostile data folders: wrong types, huge sizes, paths leading out ------------------------------------------


def _copy_with_metadata(folder, tmp_path, change):
    """A copy of the module's data folder whose metadata.json is edited by `change(meta)`."""
    out, _ = folder
    dst = tmp_path / "data"
    shutil.copytree(out, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    change(meta)
    (dst / "metadata.json").write_text(json.dumps(meta))
    return dst


def _set(path, value):
    def change(meta):
        *parents, last = path
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value
    return change


@pytest.mark.parametrize(("path", "value", "message"), [
    (("splits", "test"), "test.json", r"splits.test must be an object with a 'json' file name, got 'test.json'"),
    (("image_root",), 7, r"'image_root' must be a relative folder path \(a string\), got 7"),
    (("splits", "test", "json"), 3, r"splits.test.json must be a file name \(a string\), got 3"),
    (("splits", "test", "scenes"), ["a", "b"], r"splits.test.scenes\[0\] must be an object with an 'image' name"),
    (("splits", "test", "scenes"), "abc", r"splits.test.scenes must be a list of objects, got str"),
    (("splits", "test", "image_size"), "big", r"splits.test.image_size must be \[side, side\].*got 'big'"),
    (("splits", "test", "image_size"), [100000, 100000], r"splits.test.image_size must be a whole number from 1 "
                                                           r"to 1024, got 100000"),
    (("splits",), ["test"], r"'splits' must be an object"),
])
def test_malformed_metadata_fields_are_named_not_a_type_error(folder, tmp_path, path, value, message):
    data = _copy_with_metadata(folder, tmp_path, _set(path, value))
    with pytest.raises(DataError, match=message) as info:
        read_dataset(data, splits=("test",))
    assert "metadata.json" in str(info.value) and "\n" not in str(info.value)


def test_image_size_above_the_limit_is_refused_before_allocating(folder):
    out, _ = folder
    with pytest.raises(DataError, match="image size must be a whole number from 1 to 1024, got 100000"):
        read_dataset(out, image_size=100000)
    with pytest.raises(DataError, match="got 'big'"):
        read_split(out / "test.json", out / "images", "test", "big")


@pytest.mark.parametrize(("path", "value", "what"), [
    (("image_root",), "..", "image_root '..' escapes"),
    (("image_root",), "/etc", "image_root '/etc' escapes"),
    (("splits", "test", "json"), "../../../../../../../../etc/passwd", "json '../../.*passwd' escapes"),
    (("splits", "test", "json"), "/etc/passwd", "json '/etc/passwd' escapes"),
])
def test_data_folder_cannot_name_files_outside_itself(folder, tmp_path, path, value, what):
    data = _copy_with_metadata(folder, tmp_path, _set(path, value))
    with pytest.raises(DataError, match=what):
        read_dataset(data, splits=("test",))


def test_an_image_bomb_in_a_data_folder_is_one_error_naming_row_and_file(tmp_path, png_claiming):
    path, root = _fixture(tmp_path, [{"image": "bomb.png", "caption": FIVE}])
    png_claiming(root / "bomb.png", 30000, 30000)
    with pytest.raises(DataError, match=r"ann.json row 0: \S*bomb.png: image header claims more pixels"):
        read_split(path, root, "test", 8)


def test_symlinks_leading_out_of_the_data_folder_are_refused(folder, tmp_path):
    out, splits = folder
    data = _copy_with_metadata(folder, tmp_path, lambda meta: None)
    name = splits["test"].names[0]
    secret = tmp_path / "secret.png"
    Image.new("RGB", (4, 4), (255, 0, 0)).save(secret)
    (data / "images" / name).unlink()
    (data / "images" / name).symlink_to(secret)
    with pytest.raises(DataError, match=f"image path '{name}' escapes .*secret.png"):
        read_dataset(data, splits=("test",))
    # a symlinked image root too; the caller may still point at a root of its choice explicitly
    shutil.rmtree(data / "images")
    (data / "images").symlink_to(out / "images")
    with pytest.raises(DataError, match="image_root 'images' escapes"):
        read_dataset(data, splits=("test",))
    back = read_dataset(data, splits=("test",), image_root=out / "images")
    assert back["test"].images.tobytes() == splits["test"].images.tobytes()


def test_image_files_are_written_atomically(tmp_path, monkeypatch):
    splits = make_splits("text-poor", 2, 1, 1, seed=1)
    real_save = Image.Image.save

    def dying_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        raise OSError("disk full")  # the PNG is complete but the writer dies before finishing

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "d", splits)
    assert [p for p in (tmp_path / "d" / "images").rglob("*") if p.is_file()] == []  # nothing, no temporary
