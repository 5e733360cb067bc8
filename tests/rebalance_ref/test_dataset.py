import numpy as np
import pytest

from rebalance_ref.dataset import CaptionedImages


def _data(n=3, caps=2):
    images = np.arange(n * 4 * 4 * 3, dtype=np.int64).reshape(n, 4, 4, 3).astype(np.uint8)
    return CaptionedImages(images=images, captions=[[f"caption {i} {j}" for j in range(caps)] for i in range(n)],
                           names=[f"img{i}.png" for i in range(n)])


def test_pairs_are_image_major_in_caption_order():
    data = CaptionedImages(images=np.zeros((3, 2, 2, 3), np.uint8), captions=[["a", "b"], ["c"], ["d", "e", "f"]],
                           names=["x", "y", "z"])
    idx, flat = data.pairs()
    assert idx.dtype == np.int64
    assert idx.tolist() == [0, 0, 1, 2, 2, 2]
    assert flat == ["a", "b", "c", "d", "e", "f"]
    assert len(data) == 3 and data.image_size == (2, 2)


def test_subset_keeps_rows_together():
    data = _data(4)
    sub = data.subset([2, 0])
    assert sub.names == ["img2.png", "img0.png"]
    assert sub.captions[0] == ["caption 2 0", "caption 2 1"]
    np.testing.assert_array_equal(sub.images[1], data.images[0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": np.zeros((2, 4, 4), np.uint8)}, "shape"),
        ({"images": np.zeros((2, 4, 4, 3), np.float32)}, "uint8"),
        ({"images": [[0]]}, "numpy array"),
        ({"captions": [["a"]]}, "one caption list per image"),
        ({"captions": [["a"], []]}, r"captions\[1\]"),
        ({"captions": [["a"], ["  "]]}, r"captions\[1\]\[0\]"),
        ({"names": ["only one"]}, "names"),
        ({"canonical": ["x"]}, "canonical"),
    ],
)
def test_bad_input_is_named(change, message):
    fields = {"images": np.zeros((2, 4, 4, 3), np.uint8), "captions": [["a"], ["b"]], "names": ["p", "q"]}
    fields.update(change)
    with pytest.raises(ValueError, match=message):
        CaptionedImages(**fields)
