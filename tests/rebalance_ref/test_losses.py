import math
import re

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from rebalance_ref import losses
from rebalance_ref.checks import DISTANCES
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.relations import cosine_relation, fuse_teachers, offdiag
from rebalance_ref.tolerances import FD_REL_TOL, IDENTITY_RTOL, KINKED_FD_STEP, ORACLE_RTOL
from tests.rebalance_ref.test_distances import kink_free, pair_kink_gap, wasserstein_kink_gap

BATCHES = (2, 3, 7, 16)


# --- inputs -----------------------------------------------------------------------------------------------------------


def image_ids(batch, repeated, seed=0):
    """None (one image per row), or ids where some image has several captions in the batch."""
    if not repeated:
        return None
    ids = np.random.default_rng(seed).integers(0, max(1, batch // 2), batch) + 10
    ids[-1] = ids[0]
    return ids


def contrast_inputs(batch, repeated, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((batch, 6)),
        rng.standard_normal((batch, 6)),
        rng.uniform(0.1, 0.5),
        image_ids(batch, repeated, seed),
    )


def structure_views(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights):
    """The (student, image, text, blend) entries each distance compares, built here from the public relations."""
    batch = z.shape[0]
    s_f, s_i, s_t = (cosine_relation(x, tau2)[0] for x in (z, img_teacher, txt_teacher))
    e = fuse_teachers(s_t, s_i, lam)[0]
    if distance != "wasserstein":
        return [offdiag(r)[0] for r in (s_f, s_i, s_t, e)], None
    w = offdiag(np.ones((batch, batch)) if row_weights is None else row_weights)[0].reshape(batch, batch - 1)
    return [offdiag(r)[0].reshape(batch, batch - 1) * w for r in (s_f, s_i, s_t, e)], w


def structure_kink_gap(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights):
    (u_f, u_i, u_t, u_e), w = structure_views(z, img_teacher, txt_teacher, lam, tau2, distance, row_weights)
    if distance == "wasserstein":
        return min(wasserstein_kink_gap(u, u_e, w, weights_vary=row_weights is not None) for u in (u_f, u_i, u_t))
    return min(pair_kink_gap(distance, u, u_e) for u in (u_f, u_i, u_t))


def structure_inputs(batch, distance, seed=0, with_row_weights=True):
    """Keyword arguments of structure_distill at a point at least KINK_GAP away from every kink."""

    def draw(rng):
        row_weights = rng.uniform(0.1, 1.0, (batch, batch)) if distance == "wasserstein" and with_row_weights else None
        return (
            rng.standard_normal((batch, 5)),
            rng.standard_normal((batch, 4)),
            rng.standard_normal((batch, 6)),
            rng.uniform(0.2, 0.8),
            rng.uniform(0.2, 1.0),
            distance,
            row_weights,
        )

    names = ("z", "img_teacher", "txt_teacher", "lam", "tau2", "distance", "row_weights")
    return dict(zip(names, kink_free(draw, structure_kink_gap, seed), strict=True))


def bad_cases():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    nan = x.copy()
    nan[2, 1] = np.nan
    good = {"z": x, "img_teacher": y, "txt_teacher": x[:, :2], "lam": 0.5, "tau2": 0.1}
    wd = {**good, "distance": "wasserstein"}
    negative = np.ones((3, 3))
    negative[0, 2] = -1.0
    empty_row = np.ones((3, 3))
    empty_row[1] = 0.0
    return [
        ("itc", {"v": x[0], "t": y, "tau": 0.1}, "v: expected a 2-D array of shape (B, D), got shape (4,)"),
        ("itc", {"v": x, "t": y[:2], "tau": 0.1}, "v and t: expected the same batch size, got 3 and 2"),
        ("itc", {"v": x, "t": y[:, :3], "tau": 0.1}, "v and t: expected the same shape"),
        ("itc", {"v": x, "t": nan, "tau": 0.1}, "t: expected finite values, got NaN or Inf"),
        ("itc", {"v": x, "t": y, "tau": -0.1}, "tau: expected a positive scalar"),
        ("itc", {"v": x, "t": y, "tau": 0.1, "idx": np.arange(4)}, "idx: expected 3 image ids"),
        ("itc", {"v": x, "t": y, "tau": 0.1, "idx": np.array([0.5, 1, 2])}, "idx: expected integer image ids"),
        ("single_contrast", {"x": x, "teacher": y[:2], "tau": 0.1}, "x and teacher: expected the same batch size"),
        ("single_contrast", {"x": nan, "teacher": y, "tau": 0.1}, "x: expected finite values"),
        ("itm", {"logits": x, "labels": [0, 1, 1]}, "logits: expected shape (N, 2)"),
        ("itm", {"logits": x[:, :2], "labels": [0, 2, 1]}, "labels: expected values in {0, 1}"),
        ("itm", {"logits": x[:, :2], "labels": [0, 1]}, "labels: expected 3 labels"),
        (
            "structure_distill",
            {**good, "distance": "kl"},
            "distance: expected one of 'mae', 'mse', 'cumsum_l1', "
            "'wasserstein', got 'kl' (the official 'kl' is 'cumsum_l1')",
        ),
        ("structure_terms", {**good, "distance": "l2"}, "distance: expected one of"),
        ("structure_distill", {**good, "z": x[:1]}, "z: expected at least 2 rows"),
        ("structure_distill", {**good, "img_teacher": y[:2]}, "z and img_teacher: expected the same batch size"),
        ("structure_distill", {**good, "txt_teacher": nan}, "txt_teacher: expected finite values"),
        ("structure_distill", {**good, "z": x[0]}, "z: expected a 2-D array"),
        ("structure_distill", {**good, "tau2": 0.0}, "tau2: expected a positive scalar"),
        ("structure_distill", {**good, "lam": np.nan}, "lam: expected a finite scalar"),
        ("structure_distill", {**good, "weights": {"kd": 1.0, "ttc": 2.0}}, "weights: expected keys among"),
        ("structure_distill", {**good, "weights": {"kd": np.inf}}, "weights['kd']: expected a finite scalar"),
        ("structure_distill", {**good, "row_weights": np.ones((3, 3))}, "row_weights: only used with distance="),
        ("structure_distill", {**wd, "row_weights": np.ones((3, 2))}, "row_weights: expected shape (3, 3)"),
        ("structure_distill", {**wd, "row_weights": negative}, "row_weights: expected non-negative weights"),
        ("structure_distill", {**wd, "row_weights": empty_row}, "row_weights: expected a positive sum in every row"),
    ]


# --- values against loops over the definitions --------------------------------------------------------------------


def soft_ce_loop(s, ids):
    """-mean_i sum_j y_ij log softmax_j(s_i), y from the ids, written as loops."""
    batch = len(ids)
    total = 0.0
    for i in range(batch):
        positives = [j for j in range(batch) if ids[j] == ids[i]]
        log_z = math.log(sum(math.exp(s[i][k]) for k in range(s.shape[1])))
        total -= sum(s[i][j] - log_z for j in positives) / len(positives)
    return total / batch


@pytest.mark.parametrize("repeated", [False, True])
def test_itc_and_single_contrast_match_loops(repeated):
    v, t, tau, idx = contrast_inputs(7, repeated, seed=3)
    ids = np.arange(7) if idx is None else idx
    s = np.array([[a @ b / np.linalg.norm(a) / np.linalg.norm(b) / tau for b in t] for a in v])
    expected_itc = 0.5 * (soft_ce_loop(s, ids) + soft_ce_loop(s.T, ids))
    assert losses.itc(v, t, tau, idx)[0] == pytest.approx(expected_itc, rel=ORACLE_RTOL)
    assert losses.single_contrast(v, t, tau, idx)[0] == pytest.approx(soft_ce_loop(s, ids), rel=ORACLE_RTOL)


def test_image_ids_matter_only_through_equality():
    v, t, tau, _ = contrast_inputs(5, False, seed=4)
    default = losses.itc(v, t, tau)[0]
    assert losses.itc(v, t, tau, np.arange(5))[0] == pytest.approx(default, rel=IDENTITY_RTOL)
    assert losses.itc(v, t, tau, [40, 7, 9, 1, 3])[0] == pytest.approx(default, rel=IDENTITY_RTOL)
    assert losses.itc(v, t, tau, [0, 0, 1, 1, 1])[0] != pytest.approx(default)


def test_itm_matches_loop():
    rng = np.random.default_rng(5)
    logits, labels = rng.standard_normal((6, 2)), [1, 0, 0, 1, 0, 0]
    expected = -np.mean(
        [row[c] - math.log(math.exp(row[0]) + math.exp(row[1])) for row, c in zip(logits, labels, strict=True)]
    )
    value, grads = losses.itm(logits, labels)
    assert value == pytest.approx(expected, rel=ORACLE_RTOL)
    np.testing.assert_allclose(grads["logits"].sum(axis=1), 0.0, atol=1e-15)  # softmax - onehot sums to 0


def test_structure_terms_match_definitions():
    kw = structure_inputs(5, "mae", seed=1)
    (u_f, u_i, u_t, u_e), _ = structure_views(**kw)
    terms, _ = losses.structure_terms(**kw)
    assert terms["kd"] == pytest.approx(np.mean(np.abs(u_f - u_e)), rel=ORACLE_RTOL)
    assert terms["kdi"] == pytest.approx(np.mean(np.abs(u_i - u_e)), rel=ORACLE_RTOL)
    assert terms["kdt"] == pytest.approx(np.mean(np.abs(u_t - u_e)), rel=ORACLE_RTOL)
    weights = {"kd": 2.0, "kdi": 0.5, "kdt": -1.0}
    value, grads = losses.structure_distill(**kw, weights=weights)
    _, term_grads = losses.structure_terms(**kw)
    assert value == pytest.approx(sum(weights[k] * terms[k] for k in terms), rel=IDENTITY_RTOL)
    for name in ("z", "lam", "tau2"):
        combined = sum(weights[k] * np.asarray(term_grads[k][name]) for k in terms)
        np.testing.assert_allclose(grads[name], combined, rtol=IDENTITY_RTOL, atol=1e-14)


def test_wasserstein_reproduces_the_official_wd_variant():
    """The official "wd": D = 1 - t t^T from the student's text embeddings, relations with their diagonal set to 0,
    U = E * D, V = S_F * D, KD = mean_r scipy W1(U[r], V[r], D[r], D[r]). Ours leaves the diagonal out instead;
    with D_rr = 1 - |t_r|^2 ~ 0 the diagonal atom carries no mass, so the two agree."""
    rng = np.random.default_rng(6)
    batch = 6
    kw = structure_inputs(batch, "wasserstein", seed=6, with_row_weights=False)
    t = rng.standard_normal((batch, 8))
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    d = np.clip(1.0 - t @ t.T, 0.0, None)  # the diagonal is ~1e-16, of either sign; SciPy wants >= 0
    s_f, s_i, s_t = (cosine_relation(x, kw["tau2"])[0] for x in (kw["z"], kw["img_teacher"], kw["txt_teacher"]))
    e = kw["lam"] * s_t + (1 - kw["lam"]) * s_i
    zero_diag = 1.0 - np.eye(batch)
    u, v = e * zero_diag * d, s_f * zero_diag * d
    official = np.mean([wasserstein_distance(u[r], v[r], d[r], d[r]) for r in range(batch)])
    terms, _ = losses.structure_terms(**{**kw, "row_weights": d})
    assert terms["kd"] == pytest.approx(official, rel=1e-9)


# --- gradients against finite differences ----------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
def test_contrast_gradients(batch, repeated):
    v, t, tau, idx = contrast_inputs(batch, repeated, seed=batch)
    for fn, inputs in [
        (losses.itc, {"v": v, "t": t, "tau": tau, "idx": idx}),
        (losses.single_contrast, {"x": v, "teacher": t, "tau": tau, "idx": idx}),
    ]:
        errors = gradient_errors(fn, inputs, seed=11)
        assert set(errors) == ({"v", "t", "tau"} if fn is losses.itc else {"x", "teacher", "tau"})
        assert max(errors.values()) < FD_REL_TOL, (fn.__name__, errors)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_itm_gradients(n):
    rng = np.random.default_rng(n)
    inputs = {"logits": 3 * rng.standard_normal((n, 2)), "labels": rng.integers(0, 2, n)}
    errors = gradient_errors(losses.itm, inputs, seed=11)
    assert max(errors.values()) < FD_REL_TOL, errors


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("distance", DISTANCES)
def test_structure_distill_gradients(batch, distance):
    kw = structure_inputs(batch, distance, seed=batch)
    kw["weights"] = {"kd": 2.0, "kdi": 1.0, "kdt": 0.5}
    errors = gradient_errors(losses.structure_distill, kw, seed=11, step=KINKED_FD_STEP)
    expected = {"z", "lam", "tau2"} | ({"row_weights"} if distance == "wasserstein" else set())
    assert set(errors) == expected
    assert max(errors.values()) < FD_REL_TOL, errors


@pytest.mark.parametrize("distance", DISTANCES)
def test_structure_terms_gradients(distance):
    kw = structure_inputs(7, distance, seed=70, with_row_weights=False)
    for term in ("kd", "kdi", "kdt"):

        def one_term(term=term, **inputs):
            values, grads = losses.structure_terms(**inputs)
            return values[term], grads[term]

        errors = gradient_errors(one_term, kw, seed=11, step=KINKED_FD_STEP)
        assert max(errors.values()) < FD_REL_TOL, (term, errors)


# --- the facts of docs/design.md §2 ------------------------------------------------------------------------------


def test_kdi_plus_kdt_is_constant_for_lam_in_unit_interval_with_mae():
    kw = structure_inputs(7, "mae", seed=8)
    (_, u_i, u_t, _), _ = structure_views(**kw)
    gap = np.mean(np.abs(u_t - u_i))  # KDI = |lam| gap, KDT = |1 - lam| gap
    inside = []
    for lam in np.linspace(0.0, 1.0, 11):
        terms, grads = losses.structure_terms(**{**kw, "lam": lam})
        inside.append(terms["kdi"] + terms["kdt"])
        if 0 < lam < 1:
            assert grads["kdi"]["lam"] + grads["kdt"]["lam"] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(inside, gap, rtol=IDENTITY_RTOL)
    for lam in (-0.5, 1.25, 3.0):  # outside [0, 1] the sum grows like a barrier: (|lam| + |1 - lam|) gap
        terms, _ = losses.structure_terms(**{**kw, "lam": lam})
        assert terms["kdi"] + terms["kdt"] == pytest.approx((abs(lam) + abs(1 - lam)) * gap, rel=IDENTITY_RTOL)
        assert terms["kdi"] + terms["kdt"] > gap * 1.4


def test_mse_pulls_lam_to_one_half():
    kw = structure_inputs(7, "mse", seed=9)
    (_, u_i, u_t, _), _ = structure_views(**kw)
    gap = np.mean((u_t - u_i) ** 2)
    for lam in (0.0, 0.3, 0.5, 1.7):
        terms, _ = losses.structure_terms(**{**kw, "lam": lam})
        assert terms["kdi"] + terms["kdt"] == pytest.approx((lam**2 + (1 - lam) ** 2) * gap, rel=IDENTITY_RTOL)


@pytest.mark.parametrize("distance", DISTANCES)
def test_kdi_and_kdt_ignore_the_student(distance):
    kw = structure_inputs(5, distance, seed=10)
    terms, grads = losses.structure_terms(**kw)
    moved, _ = losses.structure_terms(**{**kw, "z": kw["z"] * 3.0 + 1.0})
    assert moved["kd"] != pytest.approx(terms["kd"])
    for term in ("kdi", "kdt"):
        assert moved[term] == pytest.approx(terms[term], rel=IDENTITY_RTOL)
        np.testing.assert_array_equal(grads[term]["z"], 0.0)


@pytest.mark.parametrize("distance", DISTANCES)
def test_every_term_scales_with_inverse_tau2(distance):
    """Every term is homogeneous in 1/tau2: of degree 2 for mse, 1 otherwise. So dL/dtau2 = -degree L / tau2 < 0:
    a learnable, unclamped tau2 only ever grows, annealing the distillation."""
    degree = 2 if distance == "mse" else 1
    kw = structure_inputs(7, distance, seed=12)
    terms, grads = losses.structure_terms(**kw)
    for factor in (0.5, 3.0):
        scaled, _ = losses.structure_terms(**{**kw, "tau2": kw["tau2"] * factor})
        for term in terms:
            assert scaled[term] == pytest.approx(terms[term] / factor**degree, rel=IDENTITY_RTOL * 10)
    for term in terms:
        assert grads[term]["tau2"] == pytest.approx(-degree * terms[term] / kw["tau2"], rel=IDENTITY_RTOL * 10)
        assert grads[term]["tau2"] < 0


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_names_the_argument(name, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        getattr(losses, name)(**kwargs)


def test_row_weights_diagonal_may_be_slightly_negative():
    kw = structure_inputs(4, "wasserstein", seed=13)
    row_weights = kw["row_weights"].copy()
    np.fill_diagonal(row_weights, -1e-7)  # 1 - t t^T in float32
    value, _ = losses.structure_distill(**{**kw, "row_weights": row_weights})
    assert value == pytest.approx(losses.structure_distill(**kw)[0], rel=IDENTITY_RTOL)
