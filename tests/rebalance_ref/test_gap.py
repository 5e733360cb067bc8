import numpy as np
import pytest

from rebalance_ref import gap, metrics
from rebalance_ref.losses import itc
from rebalance_ref.tolerances import IDENTITY_RTOL, ORACLE_RTOL


def two_cones(n=60, d=8, offset=2.0, seed=0):
    """Images and captions around two different directions: a clear modality gap; row i of each is a pair."""
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((n, d))
    v = shared + offset * np.eye(d)[0]
    t = shared + 0.3 * rng.standard_normal((n, d)) + offset * np.eye(d)[1]
    return v, t


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_gap_vector_has_the_length_of_the_modality_gap():
    v, t = two_cones()
    delta = gap.gap_vector(v, t[:40])
    assert np.linalg.norm(delta) == pytest.approx(metrics.modality_gap(v, t[:40]), rel=IDENTITY_RTOL)
    np.testing.assert_allclose(delta, unit(v).mean(0) - unit(t[:40]).mean(0), rtol=IDENTITY_RTOL)


def test_shift_closes_and_widens_the_gap():
    v, t = two_cones()
    original = np.linalg.norm(gap.gap_vector(v, t))
    closed = np.linalg.norm(gap.gap_vector(*gap.shift(v, t, 1.0)))
    wider = np.linalg.norm(gap.gap_vector(*gap.shift(v, t, -1.0)))
    assert closed < 0.2 * original < original < wider
    np.testing.assert_allclose(gap.shift(v, t, 0.0)[0], unit(v), rtol=IDENTITY_RTOL)


def test_shift_curve_signs_and_losses():
    v, t = two_cones(n=50)
    curve = gap.shift_curve(v, t, taus=[0.05, 1.0], lams=[-1.0, 0.0, 3.0])
    assert curve["loss"].shape == (2, 3)
    assert curve["gap"][1] == pytest.approx(curve["original_gap"], rel=IDENTITY_RTOL)
    assert curve["gap"][0] > curve["gap"][1] > 0 > curve["gap"][2]  # lam = 3 carries the centroids past each other
    # at lam = 0 the loss is the contrastive loss of the unshifted pairs
    assert curve["loss"][0, 1] == pytest.approx(itc(v, t, 0.05)[0], rel=ORACLE_RTOL)


def test_chunked_loss_averages_the_chunks():
    v, t = two_cones(n=25)
    expected = np.mean([itc(v[:10], t[:10], 0.1)[0], itc(v[10:20], t[10:20], 0.1)[0], itc(v[20:], t[20:], 0.1)[0]])
    assert gap.chunked_contrastive_loss(v, t, 0.1, chunk=10) == pytest.approx(expected, rel=ORACLE_RTOL)
    with pytest.raises(ValueError, match="chunk: expected an integer >= 2"):
        gap.chunked_contrastive_loss(v, t, 0.1, chunk=1)


def test_mean_cosine_by_definition():
    x = np.random.default_rng(0).standard_normal((7, 4)) + 1.0
    u = unit(x)
    cos = u @ u.T
    expected = (cos.sum() - np.trace(cos)) / (7 * 6)
    assert gap.mean_cosine(x) == pytest.approx(expected, rel=ORACLE_RTOL)


def test_random_relu_mlp_narrows_into_a_cone_and_the_linear_one_does_not():
    relu = gap.random_mlp_cone(n_points=40, width=64, depth=10, activation="relu", seed=1)
    linear = gap.random_mlp_cone(n_points=40, width=64, depth=10, activation="linear", seed=1)
    assert relu.shape == (11,) and abs(relu[0]) < 0.1
    assert relu[-1] > 0.9 and relu[-1] > relu[1]
    assert linear[-1] < 0.5  # no ReLU: inputs keep spreading in all directions


def test_relative_alignment_by_definition():
    v, t = two_cones(n=6)
    txt2img = np.array([0, 0, 1, 2, 3, 4, 5, 5])
    captions = np.concatenate([t, t[:2]])[[0, 6, 1, 2, 3, 4, 5, 7]]
    vn, tn = unit(v), unit(captions)
    expected = np.mean([np.sum((tn[c] - vn[p]) ** 2) - min(np.sum((tn[c] - vn[j]) ** 2) for j in range(6) if j != p)
                        for c, p in enumerate(txt2img)])
    assert gap.relative_alignment(v, captions, txt2img) == pytest.approx(expected, rel=ORACLE_RTOL)


def test_joint_uniformity_is_the_uniformity_of_both_together():
    v, t = two_cones(n=20)
    assert gap.joint_uniformity(v, t) == pytest.approx(metrics.uniformity(np.concatenate([v, t])),
                                                       rel=IDENTITY_RTOL)
    # two cones far apart: together they are more spread than each cone alone
    assert gap.joint_uniformity(v, t) < min(metrics.uniformity(v), metrics.uniformity(t))


def test_bad_input():
    v, t = two_cones(n=5)
    with pytest.raises(ValueError, match="v and t: expected the same width D, got 8 and 3"):
        gap.gap_vector(v, t[:, :3])
    with pytest.raises(ValueError, match="activation: expected 'relu' or 'linear'"):
        gap.random_mlp_cone(activation="tanh")
