import numpy as np
import pytest

from rebalance_ref import sae
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.tolerances import FD_REL_TOL, KINK_GAP, KINKED_FD_STEP, ORACLE_RTOL

PARAMS = ("w_enc", "w_dec_v", "b_dec_v", "w_dec_t", "b_dec_t")


def sae_inputs(n=6, d=4, h=8, k=3, seed=0, gap=100 * KINK_GAP):
    """Paired embeddings and SAE weights, redrawn until every row's k-th and (k+1)-th activations stand at least
    KINK_GAP apart (top-k is piecewise: finite differences must not cross a change of the kept set)."""
    rng = np.random.default_rng(seed)
    while True:
        inputs = {"v": rng.standard_normal((n, d)), "t": rng.standard_normal((n, d)),
                  "w_enc": rng.standard_normal((h, d)), "w_dec_v": 0.5 * rng.standard_normal((h, d)),
                  "b_dec_v": 0.1 * rng.standard_normal(d), "w_dec_t": 0.5 * rng.standard_normal((h, d)),
                  "b_dec_t": 0.1 * rng.standard_normal(d), "k": k}
        if all(min_topk_gap(inputs[x], inputs["w_enc"], k) > gap for x in ("v", "t")):
            return inputs


def dense_activations(x, w):
    """The loop-over-the-definition oracle: 2 - ||x/||x|| - w_j/||w_j|| || for every row and neuron."""
    out = np.empty((len(x), len(w)))
    for i, xi in enumerate(x):
        for j, wj in enumerate(w):
            out[i, j] = 2.0 - np.linalg.norm(xi / np.linalg.norm(xi) - wj / np.linalg.norm(wj))
    return out


def min_topk_gap(x, w, k):
    unit = x / np.linalg.norm(x, axis=1, keepdims=True), w / np.linalg.norm(w, axis=1, keepdims=True)
    dense = -np.sort(-(2.0 - np.linalg.norm(unit[0][:, None] - unit[1][None], axis=2)), axis=1)
    return float(np.min(dense[:, k - 1] - dense[:, k])) if k < w.shape[0] else np.inf


def bad_cases():
    base = sae_inputs()
    nan = base["v"].copy()
    nan[0, 0] = np.nan
    return [
        ("sae_activations", {"x": base["v"], "w_enc": base["w_enc"][:, :3], "k": 2}, "x and w_enc: expected the same"),
        ("sae_activations", {"x": base["v"], "w_enc": base["w_enc"], "k": 0}, "k: expected an int in [1, 8]"),
        ("sae_activations", {"x": base["v"], "w_enc": base["w_enc"], "k": 9}, "k: expected an int in [1, 8]"),
        ("sae_activations", {"x": base["v"], "w_enc": base["w_enc"], "k": "2"}, "k: expected an int"),
        ("sae_activations", {"x": base["v"][0], "w_enc": base["w_enc"], "k": 2}, "x: expected a 2-D array"),
        ("sae_loss", {**base, "t": base["t"][:4]}, "v and t: expected the same"),
        ("sae_loss", {**base, "v": nan}, "v: expected finite values"),
        ("sae_loss", {**base, "w_dec_t": base["w_dec_t"][:5]}, "w_dec_t and w_enc: expected the same shape"),
        ("sae_loss", {**base, "b_dec_v": base["b_dec_v"][:2]}, "b_dec_v: expected shape (4,)"),
    ]


def test_activations_follow_the_definition():
    inputs = sae_inputs(n=9, d=5, h=12, k=4, seed=3)
    a, _ = sae.sae_activations(inputs["v"], inputs["w_enc"], 4)
    dense = dense_activations(inputs["v"], inputs["w_enc"])
    assert a.shape == (9, 12)
    assert np.all((a > 0).sum(axis=1) == 4)  # exactly k active per row (every dense activation is > 0 here)
    for i in range(9):
        kept = np.argsort(-dense[i])[:4]
        np.testing.assert_allclose(a[i, kept], dense[i, kept], rtol=ORACLE_RTOL)
        assert np.all(a[i, np.setdiff1d(np.arange(12), kept)] == 0.0)
    assert np.all((a >= 0) & (a <= 2))


def test_loss_follows_the_definition():
    inputs = sae_inputs(seed=4)
    value, _ = sae.sae_loss(**inputs)
    expected = 0.0
    for side in ("v", "t"):
        a, _ = sae.sae_activations(inputs[side], inputs["w_enc"], inputs["k"])
        rec = a @ inputs[f"w_dec_{side}"] + inputs[f"b_dec_{side}"]
        expected += np.mean((rec - inputs[side]) ** 2)
    assert value == pytest.approx(expected, rel=ORACLE_RTOL)


def test_one_neuron_in_closed_form():
    """k = h = 1, a neuron at 45 degrees to both rows: a = 2 - sqrt(2 - sqrt(2)) for each, and a decoder that
    maps a to (a / 2, 0) leaves only the lengths unexplained."""
    v = np.array([[3.0, 0.0], [2.0, 0.0]])
    inputs = {"v": v, "t": v, "w_enc": np.array([[1.0, 1.0]]), "w_dec_v": np.array([[0.5, 0.0]]),
              "b_dec_v": np.zeros(2), "w_dec_t": np.array([[0.5, 0.0]]), "b_dec_t": np.zeros(2), "k": 1}
    a = 2.0 - np.sqrt(2.0 - np.sqrt(2.0))
    value, _ = sae.sae_loss(**inputs)
    assert value == pytest.approx(2 * np.mean([(a / 2 - 3) ** 2, 0, (a / 2 - 2) ** 2, 0]), rel=ORACLE_RTOL)


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("k", (1, 3, 8))
def test_loss_gradients_match_finite_differences(seed, k):
    inputs = sae_inputs(k=k, seed=seed)
    errors = gradient_errors(sae.sae_loss, inputs, ["v", "t", *PARAMS], step=KINKED_FD_STEP)
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("seed", (0, 5))
def test_activation_gradients_match_finite_differences(seed):
    inputs = sae_inputs(k=3, seed=seed)
    errors = gradient_errors(sae.sae_activations, {"x": inputs["v"], "w_enc": inputs["w_enc"], "k": 3},
                             ["x", "w_enc"], step=KINKED_FD_STEP)
    assert max(errors.values()) <= FD_REL_TOL, errors


def test_unkept_neurons_get_no_encoder_gradient_from_activations():
    inputs = sae_inputs(n=2, k=2, seed=7)
    a, grads = sae.sae_activations(inputs["v"], inputs["w_enc"], 2)
    never = ~(a > 0).any(axis=0)
    assert never.any()
    assert np.all(grads["w_enc"][never] == 0.0)
    assert np.all(np.abs(grads["w_enc"][~never]).sum(axis=1) > 0)


def test_scaling_an_input_changes_no_activation():
    inputs = sae_inputs(seed=8)
    a, _ = sae.sae_activations(inputs["v"], inputs["w_enc"], 3)
    b, _ = sae.sae_activations(7.0 * inputs["v"], 0.3 * inputs["w_enc"], 3)
    np.testing.assert_allclose(a, b, rtol=ORACLE_RTOL)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_is_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        getattr(sae, name)(**kwargs)
