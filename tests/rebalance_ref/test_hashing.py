import numpy as np
import pytest

from rebalance_ref import hashing
from rebalance_ref.gradcheck import gradient_errors
from rebalance_ref.losses import itc
from rebalance_ref.tolerances import FD_REL_TOL, KINK_GAP, KINKED_FD_STEP, ORACLE_RTOL

HEAD = ("w", "w_gate", "b_gate")
LOSS_ARRAYS = ("v", "t", "s", "w_i", "w_gate_i", "b_gate_i", "w_t", "w_gate_t", "b_gate_t")


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def head_params(rng, d, bits, scale=1.0):
    return {"w": scale * rng.standard_normal((bits, d)), "w_gate": rng.standard_normal((d, d)),
            "b_gate": 0.5 * rng.standard_normal(d)}


def loop_head(z, w, w_gate, b_gate, alpha):
    """The definition, one row and one bit at a time."""
    out = np.empty((len(z), len(w)))
    for i, zi in enumerate(z):
        m = np.array([1.0 / (1.0 + np.exp(-(w_gate[j] @ zi + b_gate[j]))) for j in range(len(zi))])
        for k, wk in enumerate(w):
            out[i, k] = np.tanh(alpha * sum(wk[j] * m[j] * zi[j] for j in range(len(zi))))
    return out


def loss_inputs(b=6, d=5, bits=8, seed=0, idx=None, gap=100 * KINK_GAP):
    """Paired unit embeddings, a target from them, two heads; redrawn until every code entry stands at least `gap`
    from 0 (the quantisation term's |h| has its kink there)."""
    rng = np.random.default_rng(seed)
    while True:
        v, t = unit(rng.standard_normal((b, d))), unit(rng.standard_normal((b, d)))
        hi, ht = head_params(rng, d, bits, 2.0), head_params(rng, d, bits, 2.0)
        inputs = {"v": v, "t": t, "s": hashing.code_target(v, t)[0], "w_i": hi["w"], "w_gate_i": hi["w_gate"],
                  "b_gate_i": hi["b_gate"], "w_t": ht["w"], "w_gate_t": ht["w_gate"], "b_gate_t": ht["b_gate"],
                  "alpha": 1.5, "tau": 0.2, "idx": idx}
        codes = [hashing.hash_head(inputs[z], inputs[f"w_{side}"], inputs[f"w_gate_{side}"], inputs[f"b_gate_{side}"],
                                   1.5)[0] for z, side in (("v", "i"), ("t", "t"))]
        if min(np.abs(c).min() for c in codes) > gap:
            return inputs


def bad_cases():
    base = loss_inputs()
    z = base["v"]
    head = {"z": z, "w": base["w_i"], "w_gate": base["w_gate_i"], "b_gate": base["b_gate_i"], "alpha": 1.0}
    nan = z.copy()
    nan[0, 0] = np.nan
    return [
        ("hash_head", {**head, "w": base["w_i"][:, :3]}, "w: expected width D = 5"),
        ("hash_head", {**head, "w_gate": base["w_gate_i"][:4]}, "w_gate: expected shape (5, 5)"),
        ("hash_head", {**head, "b_gate": base["b_gate_i"][:2]}, "b_gate: expected shape (5,)"),
        ("hash_head", {**head, "alpha": 0.0}, "alpha: expected a positive scalar"),
        ("hash_head", {**head, "z": nan}, "z: expected finite values"),
        ("hash_head", {**head, "z": z[0]}, "z: expected a 2-D array"),
        ("code_target", {"v": z, "t": base["t"][:4]}, "v and t: expected the same shape"),
        ("code_target", {"v": z[:1], "t": base["t"][:1]}, "v: expected at least 2 rows"),
        ("hash_loss", {**base, "w_t": base["w_t"][:4]}, "w_i and w_t: expected the same number of bits"),
        ("hash_loss", {**base, "s": base["s"][:3, :3]}, "s: expected shape (6, 6)"),
        ("hash_loss", {**base, "tau": -1.0}, "tau: expected a positive scalar"),
        ("hash_loss", {**base, "weights": {"quantisation": 1.0}}, "weights: expected keys among"),
        ("hash_loss", {**base, "w_gate_t": base["w_gate_t"][:, :2]}, "w_gate_t: expected shape (5, 5)"),
    ]


def test_head_follows_the_definition():
    rng = np.random.default_rng(1)
    z = unit(rng.standard_normal((4, 5)))
    params = head_params(rng, 5, 8)
    h, _ = hashing.hash_head(z, **params, alpha=2.0)
    np.testing.assert_allclose(h, loop_head(z, **params, alpha=2.0), rtol=ORACLE_RTOL)
    assert h.shape == (4, 8) and np.all(np.abs(h) < 1)


def test_the_code_does_not_depend_on_alpha():
    rng = np.random.default_rng(2)
    z = unit(rng.standard_normal((9, 6)))
    params = head_params(rng, 6, 16)
    low, _ = hashing.hash_head(z, **params, alpha=0.5)
    high, _ = hashing.hash_head(z, **params, alpha=7.0)
    np.testing.assert_array_equal(low > 0, high > 0)
    assert np.abs(high).mean() > np.abs(low).mean()


def test_a_closed_mask_gives_zero_codes():
    """A gate biased far below zero masks every channel: the codes collapse to 0 (every bit undecided)."""
    rng = np.random.default_rng(3)
    z = unit(rng.standard_normal((3, 4)))
    params = {**head_params(rng, 4, 8), "w_gate": np.zeros((4, 4)), "b_gate": np.full(4, -60.0)}
    h, _ = hashing.hash_head(z, **params, alpha=1.0)
    assert np.abs(h).max() < 1e-20


def test_target_follows_the_definition():
    rng = np.random.default_rng(4)
    v, t = rng.standard_normal((5, 3)), rng.standard_normal((5, 3))
    s, _ = hashing.code_target(v, t, beta=0.3, eta=0.25, mu=1.5)
    blend = 0.3 * unit(v) @ unit(v).T + 0.7 * unit(t) @ unit(t).T
    np.testing.assert_allclose(s, 1.5 * (0.75 * blend + 0.25 * blend @ blend.T / 5), rtol=ORACLE_RTOL)
    np.testing.assert_allclose(s, s.T, rtol=ORACLE_RTOL)


def test_loss_follows_the_definition():
    inputs = loss_inputs(seed=5, idx=np.array([0, 0, 1, 2, 2, 3]))
    weights = {"contrast": 0.7, "cross": 1.3, "intra": 0.2, "quant": 0.4, "balance": 0.6}
    value, _ = hashing.hash_loss(**{**inputs, "weights": weights})
    h_i = loop_head(inputs["v"], inputs["w_i"], inputs["w_gate_i"], inputs["b_gate_i"], 1.5)
    h_t = loop_head(inputs["t"], inputs["w_t"], inputs["w_gate_t"], inputs["b_gate_t"], 1.5)
    s, bits = inputs["s"], h_i.shape[1]
    expected = (0.7 * itc(h_i, h_t, 0.2, inputs["idx"])[0]
                + 1.3 * np.mean((h_i @ h_t.T / bits - s) ** 2)
                + 0.2 * (np.mean((h_i @ h_i.T / bits - s) ** 2) + np.mean((h_t @ h_t.T / bits - s) ** 2))
                + 0.4 * (np.mean((np.abs(h_i) - 1) ** 2) + np.mean((np.abs(h_t) - 1) ** 2))
                + 0.6 * (np.sum(h_i.mean(0) ** 2) + np.sum(h_t.mean(0) ** 2)))
    assert value == pytest.approx(expected, rel=ORACLE_RTOL)


def test_missing_weights_take_the_defaults():
    inputs = loss_inputs(seed=6)
    assert hashing.hash_loss(**inputs)[0] == pytest.approx(
        hashing.hash_loss(**{**inputs, "weights": {"cross": hashing.HASH_WEIGHTS["cross"]}})[0], rel=ORACLE_RTOL)
    assert hashing.hash_loss(**{**inputs, "weights": {"contrast": 0.0}})[0] < hashing.hash_loss(**inputs)[0]


def test_perfect_balanced_codes_cost_no_quantisation_or_balance():
    """Codes at exactly +-1 with every bit on for half the rows: the two regularisers are 0."""
    h = np.array([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    assert hashing._quantization(h)[0] == 0.0
    assert hashing._balance(h)[0] == 0.0
    assert hashing._balance(np.ones((4, 2)))[0] == pytest.approx(2.0)


@pytest.mark.parametrize("seed", (0, 1, 2))
def test_head_gradients_match_finite_differences(seed):
    rng = np.random.default_rng(seed)
    inputs = {"z": unit(rng.standard_normal((5, 4))), **head_params(rng, 4, 8), "alpha": 1.3}
    errors = gradient_errors(hashing.hash_head, inputs)
    assert set(errors) == {"z", *HEAD, "alpha"}
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("seed", (0, 1))
def test_target_gradients_match_finite_differences(seed):
    rng = np.random.default_rng(seed)
    inputs = {"v": rng.standard_normal((5, 4)), "t": rng.standard_normal((5, 4)), "beta": 0.4, "eta": 0.3,
              "mu": 1.2}
    errors = gradient_errors(hashing.code_target, inputs)
    assert max(errors.values()) <= FD_REL_TOL, errors


@pytest.mark.parametrize("seed", (0, 1, 2))
@pytest.mark.parametrize("idx", (None, np.array([0, 0, 1, 2, 2, 2])))
def test_loss_gradients_match_finite_differences(seed, idx):
    inputs = loss_inputs(seed=seed, idx=idx)
    errors = gradient_errors(hashing.hash_loss, inputs, [*LOSS_ARRAYS, "alpha", "tau"], step=KINKED_FD_STEP)
    assert max(errors.values()) <= FD_REL_TOL, errors


def test_a_shared_head_gets_the_sum_of_both_sides():
    inputs = loss_inputs(seed=7)
    shared = {**inputs, "w_t": inputs["w_i"], "w_gate_t": inputs["w_gate_i"], "b_gate_t": inputs["b_gate_i"]}
    _, grads = hashing.hash_loss(**shared)

    def loss_of(w):
        return hashing.hash_loss(**{**shared, "w_i": w, "w_t": w})[0]

    step, w = 1e-6, shared["w_i"]
    e = np.zeros_like(w)
    e[1, 2] = step
    numeric = (loss_of(w + e) - loss_of(w - e)) / (2 * step)
    assert grads["w_i"][1, 2] + grads["w_t"][1, 2] == pytest.approx(numeric, rel=1e-6)


@pytest.mark.parametrize(("name", "kwargs", "message"), bad_cases())
def test_bad_input_is_named(name, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        getattr(hashing, name)(**kwargs)
