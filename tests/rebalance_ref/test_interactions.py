import math

import numpy as np
import pytest

from rebalance_ref import interactions as ix
from rebalance_ref.tolerances import IDENTITY_RTOL, ORACLE_RTOL

# A game with dividends on singletons, pairs and a triple: v(S) = sum_T c_T [T ⊆ S].
DIVIDENDS = {(0,): 1.0, (3,): -0.5, (0, 1): 2.0, (1, 2): -1.0, (0, 2, 4): 3.0, (1, 3, 4, 5): 0.8}
N = 6


def closed_form_shapley(dividends, n):
    """phi_i = sum over T containing i of c_T / |T|."""
    return np.array([sum(c / len(t) for t, c in dividends.items() if i in t) for i in range(n)])


def closed_form_interaction(dividends, i, j):
    """I_ij = sum over T containing i and j of c_T / (|T| - 1)."""
    return sum(c / (len(t) - 1) for t, c in dividends.items() if i in t and j in t)


def loop_interaction(value, n, i, j):
    """The definition as a Python loop over the subsets of N∖{i,j}."""
    others = [p for p in range(n) if p not in (i, j)]
    total = 0.0
    for size in range(len(others) + 1):
        for subset in __import__("itertools").combinations(others, size):
            def v(extra, subset=subset):
                row = np.zeros((1, n), dtype=bool)
                row[0, list(subset) + list(extra)] = True
                return value(row)[0]
            weight = math.factorial(size) * math.factorial(n - size - 2) / math.factorial(n - 1)
            total += weight * (v((i, j)) - v((i,)) - v((j,)) + v(()))
    return total


ALL_PAIRS = [(i, j) for i in range(N) for j in range(i + 1, N)]


def test_exact_shapley_matches_closed_form_and_is_efficient():
    game = ix.unanimity_game(DIVIDENDS)
    phi = ix.shapley_exact(game, N)
    np.testing.assert_allclose(phi, closed_form_shapley(DIVIDENDS, N), rtol=ORACLE_RTOL, atol=1e-14)
    full, empty = game(np.ones((1, N), bool))[0], game(np.zeros((1, N), bool))[0]
    assert phi.sum() == pytest.approx(full - empty, rel=IDENTITY_RTOL)


def test_exact_interactions_match_closed_form_and_the_loop():
    game = ix.unanimity_game(DIVIDENDS)
    got = ix.interaction_exact(game, N, ALL_PAIRS)
    expected = [closed_form_interaction(DIVIDENDS, i, j) for i, j in ALL_PAIRS]
    np.testing.assert_allclose(got, expected, rtol=ORACLE_RTOL, atol=1e-14)
    for p, (i, j) in enumerate(ALL_PAIRS[:4]):
        assert got[p] == pytest.approx(loop_interaction(game, N, i, j), rel=ORACLE_RTOL, abs=1e-14)
    assert got[ALL_PAIRS.index((0, 1))] == pytest.approx(2.0 + 0.0)  # the (0,1) pair dividend only
    assert got[ALL_PAIRS.index((0, 4))] == pytest.approx(3.0 / 2)  # the triple (0, 2, 4)


def test_additive_game_has_no_interactions():
    game = ix.unanimity_game({(i,): float(i + 1) for i in range(5)})
    assert np.all(np.abs(ix.interaction_exact(game, 5, [(0, 1), (2, 4)])) < 1e-12)
    samples = ix.interaction_samples(game, 5, [(0, 1), (2, 4)], samples=50, seed=1)
    assert np.all(np.abs(samples.mean) < 1e-12) and np.all(samples.stderr < 1e-12)


def test_sampled_interactions_agree_with_exact_within_their_error():
    game = ix.unanimity_game(DIVIDENDS)
    exact = ix.interaction_exact(game, N, ALL_PAIRS)
    est = ix.interaction_samples(game, N, ALL_PAIRS, samples=2000, seed=0)
    z = np.abs(est.mean - exact) / np.maximum(est.stderr, 1e-12)
    assert est.evaluations == len(ALL_PAIRS) * 2000 * 4
    assert np.all(z < 4.5), z  # every pair within 4.5 standard errors
    assert np.mean(z < 2.0) >= 0.8  # and most within 2, as a calibrated standard error gives (~95 %)
    assert np.max(np.abs(est.mean - exact)) < 0.1


def test_sampling_error_shrinks_as_one_over_sqrt_samples():
    game = ix.unanimity_game(DIVIDENDS)
    small = ix.interaction_samples(game, N, [(0, 2)], samples=200, seed=3).stderr[0]
    large = ix.interaction_samples(game, N, [(0, 2)], samples=3200, seed=3).stderr[0]
    assert 2.5 < small / large < 6.5  # sqrt(16) = 4


def test_sampling_is_seeded():
    game = ix.unanimity_game(DIVIDENDS)
    a = ix.interaction_samples(game, N, ALL_PAIRS[:3], samples=20, seed=5)
    b = ix.interaction_samples(game, N, ALL_PAIRS[:3], samples=20, seed=5)
    c = ix.interaction_samples(game, N, ALL_PAIRS[:3], samples=20, seed=6)
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.array_equal(a.mean, c.mean)


def test_sampled_coalitions_never_hold_the_pair_in_the_base():
    seen = []

    def value(s):
        seen.append(s.copy())
        return np.zeros(len(s))

    ix.interaction_samples(value, 7, [(2, 5), (0, 1)], samples=300, seed=0)
    rows = np.concatenate(seen).reshape(2, 300, 4, 7)
    assert not np.any(rows[1, :, 3, [0, 1]])  # the second pair's own players are kept out of its S too
    rows = rows[0]
    assert np.all(rows[:, 0, [2, 5]]) and not np.any(rows[:, 3, [2, 5]])
    assert np.all(rows[:, 1, 2] & ~rows[:, 1, 5]) and np.all(rows[:, 2, 5] & ~rows[:, 2, 2])
    sizes = rows[:, 3].sum(axis=1)
    assert set(sizes) == set(range(6))  # |S| takes every value 0..n-2


@pytest.mark.parametrize(("call", "message"), [
    (lambda: ix.shapley_exact(ix.unanimity_game({(0,): 1.0}), 1), "n: expected an int >= 2"),
    (lambda: ix.shapley_exact(ix.unanimity_game({(0,): 1.0}), 30), "n: exact enumeration needs 2^n"),
    (lambda: ix.interaction_exact(ix.unanimity_game({(0,): 1.0}), 3, [(1, 1)]), "pairs: expected two different"),
    (lambda: ix.interaction_samples(ix.unanimity_game({(0,): 1.0}), 3, [(0, 1)], samples=1), "samples: expected"),
    (lambda: ix.interaction_samples(lambda s: np.zeros(2), 3, [(0, 1)], samples=5), "value: expected one number"),
    (lambda: ix.interaction_samples(lambda s: np.full(len(s), np.nan), 3, [(0, 1)], samples=5),
     "value: expected finite"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message.replace("^", r"\^")):
        call()
