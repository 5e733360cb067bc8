"""Binary codes in the bundle: the code graphs, the manifest's version 2 and `codes` section, the gallery's packed
codes, Hamming and hash-then-rerank search through the runtime and the facade, and export verification."""

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exports.exporter.verify import CODE_TIE, TOLERANCES, verify_bundle
from exports.serving.codes import HammingIndex, hamming_distances, pack_codes
from exports.serving.manifest import FORMAT_VERSION, BundleError, read_manifest, write_manifest
from exports.serving.runtime import Retriever, index_split
from tests.exports.conftest import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[2]
BITS = 32


def _heads(student, shared):
    from rebalance_torch.hash_heads import CodeHeads

    heads = CodeHeads(student.config.embed_dim, BITS, shared=shared, seed=3)
    heads.set_alpha(2.0)
    return heads.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["separate", "shared"])
def coded(request, tmp_path_factory, student_and_tokenizer):
    """(bundle with code graphs, its heads): separate heads, then one shared head."""
    from exports.exporter.export import export_student

    student, tokenizer = student_and_tokenizer
    heads = _heads(student, request.param)
    bundle = export_student(student, tokenizer, tmp_path_factory.mktemp("codes") / "bundle", info={"k_test": 4},
                            codes=heads)
    return bundle, heads


@pytest.fixture
def indexed(coded, world, tmp_path):
    """A copy of the coded bundle with the world indexed (images and captions) and saved, loaded again."""
    bundle = shutil.copytree(coded[0], tmp_path / "bundle")
    retriever = Retriever.load(bundle)
    index_split(retriever, world)
    retriever.save_gallery()
    return Retriever.load(bundle), coded[1]


def test_the_manifest_is_version_2_with_a_codes_section(coded):
    bundle, heads = coded
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == FORMAT_VERSION == 2
    graphs = manifest["codes"]["graphs"]
    assert manifest["codes"]["bits"] == BITS
    if heads.shared:
        assert graphs == {"image": "codes", "text": "codes"} and "codes.onnx" in manifest["files"]
    else:
        assert graphs == {"image": "codes_image", "text": "codes_text"}
        assert {"codes_image.onnx", "codes_text.onnx"} <= set(manifest["files"])
    for name in set(graphs.values()):
        assert manifest["onnx"]["graphs"][name]["inputs"] == ["embeddings"]


def test_code_graphs_match_the_heads(coded, student_and_tokenizer):
    bundle, heads = coded
    retriever = Retriever.load(bundle)
    z = np.random.default_rng(0).standard_normal((7, retriever.embed_dim)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    for side in ("image", "text"):
        got, want = retriever.code_values(z, side), heads.relaxed(z, side)
        np.testing.assert_allclose(got, want, atol=TOLERANCES["h"])
        assert np.all((np.abs(want) < CODE_TIE) | ((got > 0) == (want > 0)))
    if not heads.shared:  # separate heads give different codes for the same embeddings
        assert not np.array_equal(retriever.encode_codes(z, "image"), retriever.encode_codes(z, "text"))


def test_the_gallery_keeps_hashed_packed_codes(indexed, world):
    retriever, heads = indexed
    gallery = retriever.gallery
    assert gallery.codes.dtype == np.uint8 and gallery.codes.shape == (gallery.embeddings.shape[0], BITS // 8)
    assert retriever.manifest["gallery"]["code_bits"] == BITS
    assert "gallery/codes.npy" in retriever.manifest["files"]
    n = gallery.n_images
    np.testing.assert_array_equal(gallery.codes[:n], retriever.encode_codes(gallery.embeddings[:n], "image"))
    np.testing.assert_array_equal(gallery.codes[n:], retriever.encode_codes(gallery.embeddings[n:], "text"))


def test_hamming_search_is_the_hamming_top_k(indexed, world):
    retriever, _ = indexed
    _, captions = world.pairs()
    queries = captions[:5]
    hits = retriever.search(texts=queries, k=6, codes=True)
    q_codes = retriever.encode_codes(retriever.encode_texts(queries), "text")
    image_codes = retriever.gallery.codes[: retriever.gallery.n_images]
    distances, rows = HammingIndex(image_codes).search(q_codes, 6)
    for q, row_hits in enumerate(hits):
        assert [h.kind for h in row_hits] == ["image"] * 6
        assert [h.row for h in row_hits] == rows[q].tolist()
        assert [h.hamming for h in row_hits] == distances[q].tolist()
        assert [h.hamming for h in row_hits] == sorted(h.hamming for h in row_hits)
        full = hamming_distances(q_codes[q:q + 1], image_codes)[0]
        assert row_hits[-1].hamming <= np.sort(full)[5]


def test_a_shortlist_of_the_whole_gallery_gives_the_exact_search(indexed, world):
    retriever, _ = indexed
    _, captions = world.pairs()
    exact = retriever.search(texts=captions[:4], k=5, modality="all")
    coded = retriever.search(texts=captions[:4], k=5, modality="all", codes=True,
                             shortlist=retriever.gallery.embeddings.shape[0])
    for a, b in zip(exact, coded, strict=True):
        assert [h.row for h in a] == [h.row for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-6)
        assert all(h.hamming is not None for h in b) and all(h.hamming is None for h in a)


def test_an_image_query_searches_captions_by_codes_and_can_be_itm_reranked(indexed, world):
    retriever, _ = indexed
    hits = retriever.search_image(world.images[0], k=3, codes=True, shortlist=10, rerank=True, rerank_k=8)
    assert [h.kind for h in hits] == ["text"] * 3 and all(h.itm is not None and h.hamming is not None for h in hits)


def test_codes_on_a_bundle_without_code_graphs_are_refused(exported, world):
    retriever = Retriever.load(exported)
    index_split(retriever, world, what="images")
    assert retriever.code_bits is None and retriever.gallery.codes is None
    with pytest.raises(ValueError, match="has no code graphs, so --codes cannot search it"):
        retriever.search_text("a red circle", codes=True)


def test_a_gallery_without_codes_is_refused_for_code_search(coded, world, tmp_path):
    from exports.serving.gallery import Gallery

    retriever = Retriever.load(shutil.copytree(coded[0], tmp_path / "bundle"))
    gallery = index_split(retriever, world, what="images")
    retriever.set_gallery(Gallery(embeddings=gallery.embeddings.copy(), image_names=gallery.image_names,
                                  captions=[], caption_sources=[]))
    retriever.save_gallery()
    again = Retriever.load(tmp_path / "bundle")
    with pytest.raises(ValueError, match="was indexed without codes .* index it again"):
        again.search_text("a red circle", codes=True)
    assert again.search_text("a red circle", k=2)  # the float search still works


def test_a_shortlist_without_codes_is_refused(indexed):
    retriever, _ = indexed
    with pytest.raises(ValueError, match="shortlist re-ranks the Hamming candidates"):
        retriever.search_text("a red circle", shortlist=5)
    with pytest.raises(ValueError, match="shortlist must be an int >= 1"):
        retriever.search_text("a red circle", codes=True, shortlist=0)


def test_codes_of_another_width_are_refused(indexed):
    from exports.serving.gallery import Gallery

    retriever, _ = indexed
    g = retriever.gallery
    other = Gallery(embeddings=np.ascontiguousarray(g.embeddings), image_names=g.image_names, captions=g.captions,
                    caption_sources=g.caption_sources, codes=np.zeros((len(g.embeddings), 2 * BITS // 8), np.uint8))
    with pytest.raises(ValueError, match=f"codes have {2 * BITS} bits but the bundle's code graphs make {BITS}"):
        retriever.set_gallery(other)


def test_an_unlisted_codes_file_is_refused(coded, world, tmp_path):
    bundle = shutil.copytree(coded[0], tmp_path / "bundle")
    retriever = Retriever.load(bundle)
    index_split(retriever, world, what="images")
    retriever.save_gallery()
    manifest = json.loads((bundle / "manifest.json").read_text())
    del manifest["files"]["gallery/codes.npy"]
    write_manifest(bundle, manifest, manifest["files"])
    with pytest.raises(BundleError, match="gallery/codes.npy is not listed"):
        Retriever.load(bundle)


def test_a_version_1_bundle_still_loads_searches_and_stays_version_1(exported, world, tmp_path):
    bundle = shutil.copytree(exported, tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 1
    write_manifest(bundle, manifest, manifest["files"])
    retriever = Retriever.load(bundle)
    assert retriever.manifest["format_version"] == 1 and retriever.code_bits is None
    index_split(retriever, world, what="images")
    retriever.save_gallery()
    again = Retriever.load(bundle)
    assert again.manifest["format_version"] == 1 and "gallery/codes.npy" not in again.manifest["files"]
    assert len(again.search_text(world.captions[0][0], k=3)) == 3


def test_a_version_1_manifest_with_codes_is_refused(coded, tmp_path):
    bundle = shutil.copytree(coded[0], tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["format_version"] = 1
    write_manifest(bundle, manifest, manifest["files"])
    with pytest.raises(BundleError, match="a version-1 bundle has no 'codes' section"):
        read_manifest(bundle)


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(bits=12), "codes.bits must be a positive multiple of 8"),
    (lambda c: c.update(graphs={"image": "codes_image"}), "codes.graphs must name the 'image' and the 'text'"),
    (lambda c: c["graphs"].update(text="nowhere"), "codes.graphs.text names 'nowhere'"),
])
def test_a_bad_codes_section_is_refused(coded, tmp_path, change, message):
    bundle = shutil.copytree(coded[0], tmp_path / "bundle")
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest["codes"])
    write_manifest(bundle, manifest, manifest["files"])
    with pytest.raises(BundleError, match=message):
        read_manifest(bundle)


def test_verification_covers_the_code_graphs(coded, student_and_tokenizer, world):
    bundle, heads = coded
    student, tokenizer = student_and_tokenizer
    report = verify_bundle(bundle, student, tokenizer, world, heads=heads)
    assert report.ok, report.table()
    names = {c.graph for c in report.outputs if c.output == "h"}
    assert names == set(read_manifest(bundle)["codes"]["graphs"].values())
    assert report.codes["rows"] == 24 + 24 * len(world.captions[0]) and report.codes["differing_outside_ties"] == 0
    assert "packed codes" in report.table()
    with pytest.raises(ValueError, match="has code graphs: pass the hash heads"):
        verify_bundle(bundle, student, tokenizer)


def test_verification_fails_for_other_heads(coded, student_and_tokenizer, world):
    bundle, heads = coded
    student, tokenizer = student_and_tokenizer
    from rebalance_torch.hash_heads import CodeHeads

    other = CodeHeads(heads.dim, BITS, heads.shared, seed=99).eval()
    other.set_alpha(2.0)
    report = verify_bundle(bundle, student, tokenizer, world, heads=other)
    assert not report.ok and report.codes["differing_outside_ties"] > 0


def test_the_facade_searches_by_codes(indexed, world):
    import rebalance

    retriever, _ = indexed
    model = rebalance.load(retriever.bundle_dir)
    assert model.code_bits == BITS
    hits = model.search(world.captions[1][0], k=4, codes=True, shortlist=8)
    assert len(hits) == 4 and all(h.hamming is not None for h in hits)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    with pytest.raises(ValueError, match="codes need a text or an image query"):
        model.search(retriever.gallery.embeddings[:2], codes=True)


def test_pack_of_the_code_graph_output_is_what_the_gallery_stores(indexed):
    retriever, _ = indexed
    g = retriever.gallery
    values = retriever.code_values(g.embeddings[: g.n_images], "image")
    np.testing.assert_array_equal(pack_codes(values), g.codes[: g.n_images])


CODES_TORCH_FREE = BLOCK_TORCH + textwrap.dedent("""
    import numpy as np
    from exports.serving.runtime import Retriever

    retriever = Retriever.load(sys.argv[1], threads=1)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    retriever.set_gallery(retriever.build_gallery(images=images, captions=["a red circle", "a blue square"]))
    hits = retriever.search_text("a red circle", k=3, codes=True, shortlist=4)
    print(json.dumps({"hamming": [h.hamming for h in hits], "bits": retriever.code_bits,
                      "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
""")


def test_code_search_runs_with_torch_blocked(coded):
    out = subprocess.run([sys.executable, "-c", CODES_TORCH_FREE, str(coded[0])], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["torch_loaded"] is False and result["bits"] == BITS and len(result["hamming"]) == 3
