import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from exports.exporter.verify import RANK_TIE, TOLERANCES
from exports.serving.gallery import Gallery
from exports.serving.manifest import BundleError
from exports.serving.runtime import Retriever, format_hits, index_split
from tests.exports.conftest import BLOCK_TORCH

REPO = Path(__file__).resolve().parents[2]


def _torch_embeddings(student, tokenizer, split):
    from rebalance_torch.evaluate import encode_split

    emb = encode_split(student, split, tokenizer, keep_tokens=False)
    return emb.v, emb.t


def test_search_rankings_equal_torch_up_to_ties(exported, student_and_tokenizer, world):
    student, tokenizer = student_and_tokenizer
    retriever = Retriever.load(exported)
    gallery = index_split(retriever, world, what="images")
    v, t = _torch_embeddings(student, tokenizer, world)
    np.testing.assert_allclose(gallery.embeddings, v, atol=TOLERANCES["v"])
    _, captions = world.pairs()
    hits = retriever.search(texts=captions[:12], k=5)
    for q, row_hits in enumerate(hits):
        torch_scores = v @ t[q]  # (N,) cosine under torch
        best = np.sort(torch_scores)[::-1][:5]
        got = torch_scores[[h.index for h in row_hits]]
        assert all(h.kind == "image" for h in row_hits)
        np.testing.assert_allclose(got, best, atol=RANK_TIE)  # same list, up to tied scores


def test_mixed_gallery_returns_both_modalities_in_score_order(exported, world):
    retriever = Retriever.load(exported)
    gallery = index_split(retriever, world)
    hits = retriever.search_text(world.captions[0][0], k=gallery.n_images + gallery.n_captions, modality="all")
    assert {h.kind for h in hits} == {"image", "text"}
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    texts = [h for h in hits if h.kind == "text"]
    assert texts[0].caption == world.captions[0][0] and texts[0].image == world.names[0]
    only_images = retriever.search_text(world.captions[0][0], k=3, modality="image")
    assert [h.kind for h in only_images] == ["image"] * 3


def test_rerank_orders_candidates_by_the_torch_itm_logit(exported, student_and_tokenizer, world):
    import torch

    from rebalance_ref.images import to_model_input
    from rebalance_torch.models import PairScorer

    student, tokenizer = student_and_tokenizer
    retriever = Retriever.load(exported)
    index_split(retriever, world)
    query = world.captions[3][0]
    hits = retriever.search_text(query, k=4, rerank=True, rerank_k=8)
    assert len(hits) == 4 and all(h.kind == "image" for h in hits)
    logits = [h.itm for h in hits]
    assert logits == sorted(logits, reverse=True)
    ids, mask = tokenizer.encode([query] * 4)
    with torch.no_grad():
        want = PairScorer(student)(torch.from_numpy(to_model_input(world.images[[h.index for h in hits]])),
                                   torch.from_numpy(ids), torch.from_numpy(mask))[:, 1].numpy()
    np.testing.assert_allclose(logits, want, atol=TOLERANCES["itm_logits"])
    by_image = retriever.search_image(world.images[0], k=2, rerank=True)
    assert [h.kind for h in by_image] == ["text", "text"] and by_image[0].itm >= by_image[1].itm
    assert "itm" in format_hits(hits)


def test_gallery_saved_into_the_bundle_is_hashed_and_reloaded(bundle, world):
    retriever = Retriever.load(bundle)
    gallery = index_split(retriever, world, what="both")
    retriever.save_gallery()
    again = Retriever.load(bundle)
    assert again.gallery.n_images == gallery.n_images and again.gallery.captions == gallery.captions
    np.testing.assert_array_equal(again.gallery.embeddings, gallery.embeddings)
    np.testing.assert_array_equal(again.gallery.pixels, world.images)
    embeddings = bundle / "gallery" / "embeddings.npy"
    np.save(embeddings, np.load(embeddings)[::-1].copy())  # same size, rows swapped
    with pytest.raises(BundleError, match="gallery/embeddings.npy does not match"):
        Retriever.load(bundle)


TORCH_FREE = BLOCK_TORCH + textwrap.dedent("""
    import numpy as np
    from exports.serving.runtime import Retriever

    retriever = Retriever.load(sys.argv[1], threads=1)
    images = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    retriever.set_gallery(retriever.build_gallery(images=images, captions=["a red circle", "a blue square"]))
    text_hits = retriever.search_text("a red circle", k=8, modality="all")
    image_hits = retriever.search_image(images[2], k=3, rerank=True)
    print(json.dumps({"kinds": sorted({h.kind for h in text_hits}), "top_image_hit": image_hits[0].to_dict(),
                      "torch_loaded": any(m == "torch" or m.startswith("torch.") for m in sys.modules)}))
""")


def test_the_runtime_searches_with_torch_blocked(exported):
    out = subprocess.run([sys.executable, "-c", TORCH_FREE, str(exported)], cwd=REPO, capture_output=True,
                         text=True, timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["torch_loaded"] is False
    assert result["kinds"] == ["image", "text"]
    assert result["top_image_hit"]["kind"] == "text" and "itm" in result["top_image_hit"]


def test_bad_requests_are_named(exported):
    retriever = Retriever.load(exported)
    with pytest.raises(ValueError, match="no gallery"):
        retriever.search_text("a red circle")
    retriever.set_gallery(retriever.build_gallery(captions=["a red circle", "a blue square"]))
    with pytest.raises(ValueError, match="exactly one of texts= or images="):
        retriever.search(texts=["a"], images=np.zeros((1, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="re-ranked only over modality 'image'"):
        retriever.search_text("a red circle", rerank=True, modality="text")
    with pytest.raises(ValueError, match="images must be uint8"):
        retriever.encode_images(np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="provider 'NoSuchExecutionProvider' is not available"):
        Retriever.load(exported, provider="NoSuchExecutionProvider")
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        Retriever.load(exported, threads=0)
    with pytest.raises(ValueError, match="gallery has 3 embeddings but 1 images"):
        Gallery(np.zeros((3, 4), np.float32), ["a"], ["b"], [None])


def test_the_gallery_is_held_once_in_memory(exported, world):
    retriever = Retriever.load(exported)
    gallery = index_split(retriever, world)
    assert np.shares_memory(gallery.embeddings, retriever._index.columns)
    query = world.captions[1][0]
    hits = retriever.search_text(query, k=3, modality="all")
    best = np.sort(gallery.embeddings @ retriever.encode_texts([query])[0])[::-1][:3]
    np.testing.assert_allclose([h.score for h in hits], best, atol=1e-6)
