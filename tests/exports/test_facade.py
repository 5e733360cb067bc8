"""`import rebalance`: load a bundle, encode texts and images, search with any float dtype — without torch."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rebalance
from exports.serving.runtime import index_split
from tests.exports.conftest import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def model(bundle, world):
    model = rebalance.load(bundle)
    index_split(model.retriever, world)
    model.retriever.save_gallery()
    return rebalance.load(bundle)


def test_encode_takes_a_str_a_list_and_images_like_sentence_transformers(model, world, tmp_path):
    from PIL import Image

    one, batch = model.encode("a red circle"), model.encode(["a red circle", "a blue square"])
    assert one.shape == (model.dim,) and batch.shape == (2, model.dim) and one.dtype == np.float32
    np.testing.assert_allclose(one, batch[0], atol=1e-6)
    np.testing.assert_allclose(model.encode_text("a red circle")[0], one, atol=1e-6)
    path = tmp_path / "scene.png"
    Image.fromarray(world.images[2]).save(path)
    from_file, from_pil = model.encode(path), model.encode(Image.open(path))
    from_array, from_batch = model.encode(world.images[2]), model.encode(world.images[:3])
    assert from_file.shape == (model.dim,) and from_batch.shape == (3, model.dim)
    for other in (from_pil, from_array, from_batch[2], model.encode_image(str(path))[0]):
        np.testing.assert_allclose(other, from_file, atol=1e-6)
    with pytest.raises(ValueError, match="texts .* or images"):
        model.encode(["a red circle", path])


def test_search_answers_text_with_images_and_takes_any_float_dtype(model, world):
    hits = model.search(world.captions[0][0], k=4)
    assert [h.kind for h in hits] == ["image"] * 4 and [h.rank for h in hits] == [1, 2, 3, 4]
    assert all(h.pixels == f"gallery/images.npy[{h.index}]" for h in hits)
    np.testing.assert_array_equal(model.image(hits[0]), world.images[hits[0].index])
    vector = model.encode(world.captions[0][0])
    by_vector = {dtype: model.search(vector.astype(dtype), k=4, modality="image")
                 for dtype in (np.float16, np.float32, np.float64)}
    assert [h.row for h in by_vector[np.float64]] == [h.row for h in hits]
    assert [h.row for h in by_vector[np.float32]] == [h.row for h in hits]
    assert len(by_vector[np.float16]) == 4
    batch = model.search(np.stack([vector, vector]).astype(np.float64), k=2)
    assert len(batch) == 2 and batch[0][0].row == batch[1][0].row
    captions = model.search(world.images[5], k=3)  # an image query: captions by default
    assert [h.kind for h in captions] == ["text"] * 3
    assert f"{len(world)} images" in repr(model)


def test_save_grid_writes_a_png_of_the_hits(model, world, tmp_path):
    from PIL import Image

    hits = model.search(world.captions[1][0], k=5)
    path = model.save_grid(tmp_path / "hits.png", hits, query=world.captions[1][0])
    with Image.open(path) as sheet:
        assert sheet.format == "PNG" and sheet.width > 5 * 128


FACADE_WITHOUT_TORCH = BLOCK_TORCH + textwrap.dedent("""
    import numpy as np
    import rebalance

    model = rebalance.load(sys.argv[1])
    hits = model.search("a red circle", k=3)
    vector_hits = model.search(model.encode("a red circle").astype(np.float64), k=3, modality="image")
    print(json.dumps({"kinds": [h.kind for h in hits], "same": [h.row for h in hits] == [h.row for h in vector_hits],
                      "ranks": [h.rank for h in hits], "shape": list(model.encode(["a", "b"]).shape),
                      "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
""")


def test_the_facade_runs_where_torch_cannot_be_imported(model):
    out = subprocess.run([sys.executable, "-c", FACADE_WITHOUT_TORCH, str(model.retriever.bundle_dir)], cwd=REPO,
                         capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {"kinds": ["image"] * 3, "same": True, "ranks": [1, 2, 3], "shape": [2, model.dim],
                      "torch_loaded": False}
