import numpy as np
import pytest
import torch

from rebalance_ref.dataset import CaptionedImages
from rebalance_ref.shapes import make_splits
from rebalance_torch import teacher_features as TF
from rebalance_torch import teachers as T
from rebalance_torch.evaluate import single_modal_ndcg, split_relevance


@pytest.fixture(scope="module")
def splits():
    return make_splits("text-poor", 96, 12, 20, seed=3)


@pytest.fixture(scope="module")
def result(splits):
    return T.train_teachers(splits, kind="supervised", seed=0, epochs=2)


def test_features_have_the_documented_shapes_and_row_order(splits, result):
    train, val, test = splits["train"], splits["val"], splits["test"]
    idx, flat = train.pairs()
    f = result.features
    assert set(f) == set(TF.FEATURE_FILES)
    d = T.TEACHER_WIDTH
    assert f["train_image"].shape == (len(flat), d) and f["train_text"].shape == (len(flat), d)
    assert f["val_image"].shape == (len(val), d) and f["val_text"].shape == (len(val.pairs()[1]), d)
    assert f["test_image"].shape == (len(test), d) and f["test_text"].shape == (len(test.pairs()[1]), d)
    assert all(x.dtype == np.float32 and np.isfinite(x).all() for x in f.values())
    # official format: row r of the image features is the feature of row r's image
    per_image = T.image_features(result.image_teacher, train)
    np.testing.assert_array_equal(f["train_image"], per_image[idx])
    # text row r is the feature of caption r (encoded alone: other padding, same feature up to rounding)
    alone = T.text_features(result.text_teacher, result.tokenizer, flat[7:9])
    np.testing.assert_allclose(f["train_text"][7:9], alone, rtol=1e-5, atol=1e-6)
    # frozen: no parameter asks for gradients
    assert not any(p.requires_grad for p in result.image_teacher.parameters())
    assert not any(p.requires_grad for p in result.text_teacher.parameters())


def test_report_compares_each_teacher_with_its_trivial_baseline(result):
    report = result.report
    assert report["split"] == "test"
    for modality, task in (("image", "i2i"), ("text", "t2t")):
        section = report[modality]
        for kind in ("rouge", "attr"):
            key = f"{kind}_{task}@10"
            assert 0.0 <= section["teacher"][key] <= 100.0 and 0.0 <= section["baseline"][key] <= 100.0
            assert section["beats_baseline"][kind] == (section["teacher"][key] > section["baseline"][key])


def test_same_seed_same_features_other_seed_other_features(splits, result):
    again = T.train_teachers(splits, kind="supervised", seed=0, epochs=2)
    for key, value in result.features.items():
        np.testing.assert_array_equal(again.features[key], value)
    other = T.train_teachers({"train": splits["train"]}, kind="supervised", seed=1, epochs=2)
    assert set(other.features) == {"train_image", "train_text"} and "split" not in other.report
    assert not np.array_equal(other.features["train_image"], result.features["train_image"])
    assert not np.array_equal(other.features["train_text"], result.features["train_text"])


def test_ssl_teacher_trains_on_images_alone_and_is_deterministic(splits):
    no_attrs = CaptionedImages(images=splits["train"].images, captions=splits["train"].captions,
                               names=splits["train"].names)
    a, info = T.train_image_teacher(no_attrs, "ssl", seed=0, epochs=1)
    b, _ = T.train_image_teacher(no_attrs, "ssl", seed=0, epochs=1)
    assert info["kind"] == "ssl" and np.isfinite(info["loss_per_epoch"]).all()
    np.testing.assert_array_equal(T.image_features(a, no_attrs), T.image_features(b, no_attrs))
    with pytest.raises(ValueError, match="ssl"):
        T.train_image_teacher(no_attrs, "supervised", epochs=1)


def test_ssl_views_keep_images_in_range_and_move_at_most_one_pixel():
    g = torch.Generator().manual_seed(0)
    images = torch.zeros(4, 3, 16, 16)
    images[:, :, 8, 8] = 1.0
    view = T.ssl_view(images, g)
    assert view.shape == images.shape and view.min() >= 0 and view.max() <= 1
    for i in range(4):
        peak = torch.nonzero(view[i].mean(0) == view[i].mean(0).max())[0]
        assert (peak - torch.tensor([8, 8])).abs().max() <= 1


def test_info_nce_is_low_for_matching_views_and_high_for_unrelated():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 8, generator=g)
    matched = T.info_nce(a, a + 0.01 * torch.randn(16, 8, generator=g), temperature=0.1)
    unrelated = T.info_nce(a, torch.randn(16, 8, generator=g), temperature=0.1)
    assert matched < 0.1 < np.log(31) / 2 < unrelated


def test_supervised_image_teacher_beats_raw_pixels_on_attribute_relevance():
    world = make_splits("balanced", 500, 5, 120, seed=1)
    teacher, _ = T.train_image_teacher(world["train"], "supervised", seed=0, epochs=8)
    rel = split_relevance(world["test"])
    learned = single_modal_ndcg(T.image_features(teacher, world["test"]), None, rel)["attr_i2i@10"]
    pixels = single_modal_ndcg(T.pixel_baseline(world["test"]), None, rel)["attr_i2i@10"]
    assert learned > pixels + 3.0


def test_label_group_weights_balance_the_groups():
    from rebalance_ref.shapes import attribute_target_names

    names = attribute_target_names()
    w = T.label_group_weights(names)
    assert w.shape == (len(names),) and torch.isclose(w.mean(), torch.tensor(1.0))
    shape_total = sum(float(w[i]) for i, n in enumerate(names) if n.startswith("shape:"))
    per_cell_colour_total = sum(float(w[i]) for i, n in enumerate(names) if ":colour:" in n)
    assert shape_total == pytest.approx(per_cell_colour_total)


def test_save_writes_files_that_load_back(tmp_path, splits, result):
    out = result.save(tmp_path / "teachers")
    n_rows = len(splits["train"].pairs()[1])
    for key in ("train_image", "train_text"):
        np.testing.assert_array_equal(TF.load_teacher_features(out / f"{key}.npy", n_rows), result.features[key])
    assert (out / TF.REPORT_FILE).is_file() and (out / "image_teacher.pt").is_file()
    state = torch.load(out / "text_teacher.pt", weights_only=True)
    assert set(state) == set(result.text_teacher.state_dict())


def test_user_features_with_wrong_shape_dtype_or_values_are_refused(tmp_path):
    good = np.random.default_rng(0).standard_normal((6, 4))
    np.save(tmp_path / "good.npy", good)
    loaded = TF.load_teacher_features(tmp_path / "good.npy", 6)
    assert loaded.dtype == np.float32 and loaded.shape == (6, 4)
    cases = {
        "rows.npy": (np.ones((5, 4)), r"\(6, d\)"),
        "flat.npy": (np.ones(6), r"\(6, d\)"),
        "nan.npy": (np.where(np.eye(6, 4) > 0, np.nan, 1.0), "NaN"),
        "text.npy": (np.array([["a"] * 4] * 6), "dtype"),
        "same.npy": (np.ones((6, 4)), "point the same way"),  # every relation 1: nothing to distil
    }
    for name, (array, message) in cases.items():
        np.save(tmp_path / name, array)
        with pytest.raises(ValueError, match=message) as info:
            TF.load_teacher_features(tmp_path / name, 6)
        assert name in str(info.value)
    with pytest.raises(ValueError, match="no such file"):
        TF.load_teacher_features(tmp_path / "missing.npy", 6)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="readable"):
        TF.load_teacher_features(tmp_path / "junk.npy", 6)


def test_bad_arguments_raise_clear_errors(splits):
    with pytest.raises(ValueError, match="kind"):
        T.train_image_teacher(splits["train"], "imagenet")
    with pytest.raises(ValueError, match="epochs"):
        T.train_text_teacher(splits["train"], epochs=0)
    with pytest.raises(ValueError, match="train"):
        T.train_teachers({"test": splits["test"]})
    with pytest.raises(ValueError, match="seed"):
        T.train_teachers(splits, seed=-1)
