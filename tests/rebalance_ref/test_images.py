import warnings

import numpy as np
import pytest
from PIL import Image

from rebalance_ref.files import DataError
from rebalance_ref.images import load_image, resize_to, to_model_input, to_rgb8
from rebalance_ref.limits import MAX_IMAGE_PIXELS


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


# --- hostile files: huge headers, wide samples, every mode ----------------------------------------------------


@pytest.mark.parametrize("side", [30000, 8500])  # past Pillow's own guard; between ours and Pillow's warning
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side, png_claiming):
    bomb = png_claiming(tmp_path / "bomb.png", side, side)
    assert bomb.stat().st_size < 100
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no Pillow warning leaks out either
        with pytest.raises(DataError, match=r"bomb.png: image header claims .*limit of 64,000,000.*before decoding"):
            load_image(bomb, 8)


def test_an_image_just_inside_the_pixel_limit_is_not_refused_by_its_header(tmp_path, png_claiming):
    # 8000 x 8000 = the limit: the header passes, decoding then finds the pixel data missing (a read error).
    fake = png_claiming(tmp_path / "big.png", 8000, MAX_IMAGE_PIXELS // 8000)
    with pytest.raises(DataError, match="big.png: cannot read image"):
        load_image(fake, 8)


def test_sixteen_bit_grayscale_is_scaled_not_clipped_to_white(tmp_path):
    ramp = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # what a 16-bit PNG opens as
        rgb = to_rgb8(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 4, 3)
    assert rgb[0, :, 0].tolist() == [0, 64, 128, 255]
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    mid = load_image(path, 4)
    assert 0 < int(mid.mean()) < 255  # before: every pixel 255


@pytest.mark.parametrize(("mode", "values", "expected"), [
    ("I", [0, 32896, 65535], [0, 128, 255]),  # 16-bit samples in the 32-bit mode older Pillow opens them as
    ("I", [0, 65535, 131070], [0, 128, 255]),  # past the nominal range: widened to the image's maximum
    ("I", [-65535, 0, 65535], [0, 128, 255]),  # and down to its minimum, not clipped
    ("F", [0.0, 0.5, 1.0], [0, 128, 255]),
    ("F", [0.0, 2.0, 4.0], [0, 128, 255]),
])
def test_wide_integer_and_float_modes_are_scaled(mode, values, expected):
    im = Image.fromarray(np.array([values], dtype=np.int32 if mode == "I" else np.float32), mode=mode)
    assert to_rgb8(im)[0, :, 1].tolist() == expected


def test_float_tiff_file_is_scaled(tmp_path):
    path = tmp_path / "depth.tif"
    Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32), mode="F").save(path)
    assert load_image(path, 3)[0, :, 0].tolist() == [0, 64, 255]


def test_float_image_with_nan_is_refused():
    im = Image.fromarray(np.array([[0.0, np.nan]], dtype=np.float32), mode="F")
    with pytest.raises(DataError, match="NaN"):
        to_rgb8(im, source="x.tif")


@pytest.mark.parametrize("mode", ["1", "L", "P", "PA", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "HSV",
                                  "I;16", "I;16B", "I;16L", "I", "F"])
def test_every_mode_converts_to_8_bit_rgb_keeping_a_bright_pixel_bright(mode):
    base = Image.new("RGB", (4, 2), (0, 0, 0))
    base.putpixel((3, 1), (255, 255, 255))
    im = base.convert("L").convert(mode) if mode.startswith("I") or mode == "F" else base.convert(mode)
    if mode.startswith("I"):  # Pillow's L -> I keeps 255; a 16-bit white is 65535
        im = Image.new(mode, im.size)
        im.putdata([65535 if (x, y) == (3, 1) else 0 for y in range(2) for x in range(4)])
    elif mode == "F":
        im = Image.fromarray(np.asarray(im, dtype=np.float32) / 255.0, mode="F")
    rgb = to_rgb8(im)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert rgb[1, 3].min() >= 250 and rgb[0, 0].max() <= 5


def test_unconvertible_mode_names_the_file():
    with pytest.raises(DataError, match="odd.png: image mode La"):
        to_rgb8(Image.new("La", (2, 2)), source="odd.png")


def test_image_size_above_the_limit_is_refused_before_allocating():
    with pytest.raises(DataError, match="image size must be a whole number from 1 to 1024, got 100000"):
        resize_to(np.zeros((2, 2, 3), np.uint8), 100000)
