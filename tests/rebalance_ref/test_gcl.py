import numpy as np
import pytest

from rebalance_ref import gcl
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, ORACLE_RTOL
from tests.rebalance_ref.test_losses import image_ids

BATCHES = (2, 3, 7)


def gcl_inputs(batch, repeated, seed=0, pairs="all"):
    rng = np.random.default_rng(seed + 100)
    return {"image": rng.standard_normal((batch, 5)), "text": 0.5 * rng.standard_normal((batch, 5)),
            "tau": rng.uniform(0.2, 0.5), "idx": image_ids(batch, repeated, seed), "pairs": pairs}


def gcl_by_definition(image, text, tau, idx=None, pairs="all"):
    """The loss written as the definition reads: a Python loop over anchors, positive modalities and keys."""
    batch = image.shape[0]
    ids = np.arange(batch) if idx is None else np.asarray(idx)
    unit = {"i": image / np.linalg.norm(image, axis=1, keepdims=True),
            "t": text / np.linalg.norm(text, axis=1, keepdims=True)}
    unit["it"] = (image + text) / np.linalg.norm(image + text, axis=1, keepdims=True)
    chosen = gcl.GCL_PAIRS[pairs]
    total = 0.0
    for a, b in chosen:
        for j in range(batch):
            denominator = sum(np.exp(unit[a][j] @ unit[m][k] / tau) for m in gcl.MODALITIES for k in range(batch)
                              if not (m == a and ids[k] == ids[j]))
            positives = [k for k in range(batch) if ids[k] == ids[j]]
            for k in positives:
                total -= np.log(np.exp(unit[a][j] @ unit[b][k] / tau) / denominator) / len(positives)
    return total / (len(chosen) * batch)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("pairs", sorted(gcl.GCL_PAIRS))
def test_gcl_gradients_match_finite_differences(batch, repeated, pairs):
    errors = gradient_errors(gcl.gcl, gcl_inputs(batch, repeated, seed=batch, pairs=pairs), seed=batch + 1)
    assert set(errors) == {"image", "text", "tau"}
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("pairs", sorted(gcl.GCL_PAIRS))
def test_gcl_equals_its_definition(repeated, pairs):
    inputs = gcl_inputs(7, repeated, seed=3, pairs=pairs)
    assert gcl.gcl(**inputs)[0] == pytest.approx(gcl_by_definition(**inputs), rel=ORACLE_RTOL)


def test_fuse_is_the_normalised_sum_and_its_gradient_matches():
    inputs = {k: v for k, v in gcl_inputs(5, False, seed=1).items() if k in ("image", "text")}
    e, _ = gcl.fuse(**inputs)
    summed = inputs["image"] + inputs["text"]
    np.testing.assert_allclose(e, summed / np.linalg.norm(summed, axis=1, keepdims=True), rtol=ORACLE_RTOL)
    assert max(gradient_errors(gcl.fuse, inputs, seed=9).values()) <= FD_REL_TOL


def test_a_longer_raw_vector_dominates_the_fusion():
    rng = np.random.default_rng(0)
    image, text = rng.standard_normal((4, 6)), rng.standard_normal((4, 6))
    e_long = gcl.fuse(100.0 * image, text)[0]
    assert np.all(np.sum(e_long * image / np.linalg.norm(image, axis=1, keepdims=True), axis=1) > 0.99)


def test_masking_removes_the_anchor_constant():
    """With every embedding identical, the unmasked loss would hold the anchor's exp(1/tau) in each denominator;
    masked, each of the 6 pairs sees one positive among the other 3B - 1 equal keys: loss = log(3B - 1)."""
    x = np.tile(np.random.default_rng(1).standard_normal((1, 4)), (5, 1))
    assert gcl.gcl(x, x, 0.1)[0] == pytest.approx(np.log(3 * 5 - 1), rel=ORACLE_RTOL)


def test_bad_pairs_name_is_refused():
    inputs = gcl_inputs(3, False)
    with pytest.raises(ValueError, match="pairs: expected one of all, cross, got 'some'"):
        gcl.gcl(**{**inputs, "pairs": "some"})
