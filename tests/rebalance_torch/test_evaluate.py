import numpy as np
import pytest
import torch

from rebalance_ref import metrics
from rebalance_ref.shapes import attribute_relevance, attribute_targets, make_splits
from rebalance_ref.tokenizer import Tokenizer
from rebalance_ref.tolerances import SAME_DIRECTION_ATOL
from rebalance_torch import evaluate as ev
from rebalance_torch.models import ModelConfig, Student


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    split = make_splits("text-poor", 8, 4, 20, seed=1)["test"]
    _, flat = split.pairs()
    tokenizer = Tokenizer.build(flat, max_len=32)
    student = Student(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, vision_width=32, text_width=32,
                                         embed_dim=16), seed=0)
    return split, tokenizer, student, ev.split_relevance(split)


def test_relevance_blocks_follow_the_official_slicing(world):
    split, _, _, rel = world
    n, c = len(split), len(rel.txt2img)
    m = metrics.rouge_relevance(split.pairs()[1], split.captions)
    assert np.allclose(rel.rouge, m)
    assert np.array_equal(rel.first, np.arange(n) * 5)
    blocks = ev._relevance_blocks(rel, "rouge")
    assert blocks["i2i"].shape == (n, n) and blocks["t2t"].shape == (n, c)
    assert blocks["i2it"].shape == (n, n + c) and blocks["t2it"].shape == (n, c + n)
    i, j, cap = 3, 7, 11
    assert blocks["i2i"][i, j] == m[5 * i, j]            # an image stands for its first caption
    assert blocks["t2t"][i, cap] == m[cap, i]             # gallery caption vs the query image's captions
    assert blocks["i2it"][i, n + cap] == m[cap, i]
    assert blocks["t2it"][i, c + j] == m[5 * i, j]        # the query caption itself vs image j (not transposed)
    attr = ev._relevance_blocks(rel, "attr")
    assert np.allclose(attr["i2i"], attribute_relevance(split.attributes, split.attributes))
    assert attr["t2t"][i, cap] == attr["i2i"][i, cap // 5]


def test_features_that_encode_the_scene_beat_random_features(world):
    split, _, _, rel = world
    targets, _ = attribute_targets(split.attributes)
    rng = np.random.default_rng(0)
    good = ev.single_modal_ndcg(targets, targets[rel.txt2img], rel)
    noise = ev.single_modal_ndcg(rng.standard_normal(targets.shape), rng.standard_normal((len(rel.txt2img), 9)), rel)
    assert good["attr_i2i@10"] > noise["attr_i2i@10"] + 10
    assert good["attr_t2t@10"] > noise["attr_t2t@10"] + 10
    assert all(0 <= v <= 100 for v in good.values())
    assert set(good) == {f"{kind}_{task}@{k}" for kind in ("rouge", "attr") for task in ("i2i", "t2t")
                         for k in ev.NDCG_KS}


def test_mixed_retrieval_removes_the_query_and_uses_cosine_on_both_blocks(world):
    split, _, _, rel = world
    targets, _ = attribute_targets(split.attributes)
    rng = np.random.default_rng(5)  # a draw whose closest two scores in a row are 30 float32 ulps apart
    # every caption sits next to its image; the jitter keeps scenes with equal attributes apart, so no two scores
    # of a row tie and the ranking does not hinge on how a BLAS kernel rounds (nearly) tied values
    v = targets + 0.05 * rng.standard_normal(targets.shape)
    t = v[rel.txt2img] + 0.05 * rng.standard_normal((len(rel.txt2img), targets.shape[1]))
    out = ev.mixed_ndcg(v, t, rel)
    # I2IT by hand: cosine image-image block then cosine image-text block, the query image (column i) removed.
    scores = np.concatenate([ev._unit(v) @ ev._unit(v).T, ev._unit(v) @ ev._unit(t).T], axis=1)
    gaps = np.diff(np.sort(scores, axis=1), axis=1)
    assert gaps.min() > 1e-6  # tie-free by a margin far above float rounding
    direct = metrics.ndcg_at_k(scores, ev._relevance_blocks(rel, "attr")["i2it"], 10, exclude=np.arange(len(v)))
    assert out["attr_i2it@10"] == pytest.approx(100 * direct.mean())
    kept = metrics.ndcg_at_k(scores, ev._relevance_blocks(rel, "attr")["i2it"], 10)
    assert not np.allclose(direct, kept)  # removing the query changes the result: it is really removed


def test_itm_rerank_rescoring_and_floor(world):
    split, tokenizer, student, _ = world
    emb = ev.encode_split(student, split, tokenizer)
    n, c = len(split), len(emb.txt2img)
    full_i2t, full_t2i = ev.itm_rerank(student, emb, k=c)
    with torch.no_grad():
        i, j = 2, 13
        direct = student.itm_logits(emb.text_tokens[j:j + 1], emb.mask[j:j + 1], emb.image_tokens[i:i + 1])[0, 1]
    assert full_i2t[i, j] == pytest.approx(float(direct), abs=1e-4)
    assert full_t2i[j, i] == pytest.approx(float(direct), abs=1e-4)
    top_i2t, _ = ev.itm_rerank(student, emb, k=3)
    sims = emb.v @ emb.t.T
    for row in range(n):
        candidates = set(np.argsort(-sims[row])[:3].tolist())
        floor = top_i2t[row].min()
        assert {g for g in range(c) if top_i2t[row, g] > floor} <= candidates
        assert all(top_i2t[row, g] > floor for g in candidates)


def test_evaluate_student_reports_every_metric(world):
    split, tokenizer, student, rel = world
    out = ev.evaluate_student(student, split, tokenizer, relevance=rel, k_test=4)
    for prefix in ("cos", "itm"):
        for key in ev.RECALL_KEYS:
            assert 0 <= out[f"{prefix}_{key}"] <= 100
    emb = ev.encode_split(student, split, tokenizer, keep_tokens=False)
    assert out["cos_r_mean"] == pytest.approx(metrics.retrieval_recall(emb.v @ emb.t.T, emb.txt2img)["r_mean"])
    for key in ("modality_gap", "alignment", "uniformity_image", "uniformity_text", "attr_t2it@50", "rouge_i2it@20"):
        assert np.isfinite(out[key])
    table = ev.markdown_table({"x": out})
    assert table.splitlines()[0].startswith("| run | R-mean (cos)") and "| x |" in table


def test_universal_retrieval_grid(world):
    split, tokenizer, student, rel = world
    emb = ev.encode_split(student, split, tokenizer, keep_tokens=False)
    out = ev.universal_retrieval(emb, rel)
    cells = [(q, k) for q in ev.UNIVERSAL_MODALITIES for k in ev.UNIVERSAL_MODALITIES]
    assert {f"uni_attr_{q}2{k}@10" for q, k in cells} <= set(out)
    assert "uni_i2i_r1" not in out and all(f"uni_{q}2{k}_r1" in out for q, k in cells if (q, k) != ("i", "i"))
    # the image->text cell is cross-modal recall with the second caption as the only key of each image
    second = rel.first + 1
    expected = metrics.retrieval_recall(emb.v @ emb.t[second].T, np.arange(len(split)))["i2t_r5"]
    assert out["uni_i2t_r5"] == pytest.approx(expected)
    # fused keys built from the raw projections
    assert emb.v_raw.shape == emb.v.shape and emb.t_raw.shape == emb.t.shape
    np.testing.assert_allclose(emb.v, emb.v_raw / np.linalg.norm(emb.v_raw, axis=1, keepdims=True),
                               atol=SAME_DIRECTION_ATOL)
    full = ev.evaluate_student(student, split, tokenizer, relevance=rel, k_test=4, itm=False)
    assert full["uni_r_mean"] == pytest.approx(out["uni_r_mean"])
    assert np.isfinite(full["alignment_relative"]) and np.isfinite(full["uniformity_joint"])
    emb.v_raw = None
    assert ev.universal_retrieval(emb, rel) == {}


def test_probe_scores_the_students_text_queries_against_the_images(world):
    split, tokenizer, student, _ = world
    out = ev.probe_student(student, split, tokenizer)
    assert "probe_p5_colour_shape" in out and "probe_p5_colour_shape:shape" in out
    assert all(0.0 <= value <= 1.0 for value in out.values())
    oracle = ev.probe_oracle(split)
    assert oracle.keys() == out.keys()
    assert oracle["probe_p5_colour_shape"] >= out["probe_p5_colour_shape"]
    assert "oracle (true attributes)" in ev.probe_table({"student": out}, oracle)
