import numpy as np
import pytest
from PIL import Image

from rebalance_ref.images import load_image, resize_to, to_model_input


def test_to_model_input_is_channels_first_in_unit_range():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)
    x = to_model_input(images)
    assert x.dtype == np.float32 and x.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(x[1, 2, 4, 6], images[1, 4, 6, 2] / 255.0, rtol=1e-6)
    assert x.min() >= 0.0 and x.max() <= 1.0


@pytest.mark.parametrize("bad", [np.zeros((2, 5, 5, 3), np.float32), np.zeros((5, 5, 3), np.uint8)])
def test_to_model_input_rejects_bad_arrays(bad):
    with pytest.raises(ValueError, match="images_uint8"):
        to_model_input(bad)


def test_resize_to_square():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, 10:] = 200  # right half bright
    out = resize_to(image, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert out[:, :3].max() < 20 and out[:, 5:].min() > 180  # stretched, not cropped
    same = resize_to(out, 8)
    np.testing.assert_array_equal(same, out)
    with pytest.raises(ValueError, match="size"):
        resize_to(image, 0)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK"])
def test_load_image_any_mode_becomes_rgb(tmp_path, mode):
    path = tmp_path / "im.png" if mode != "CMYK" else tmp_path / "im.jpg"
    Image.new("RGB", (13, 9), (200, 30, 30)).convert(mode).save(path)
    out = load_image(path, 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_load_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.png"):
        load_image(tmp_path / "nothere.png", 8)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="broken.png"):
        load_image(bad, 8)
