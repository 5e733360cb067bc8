"""Shapley values and pairwise Shapley interactions of a cooperative game, exactly and by permutation sampling.

A game has n players and a value function v over coalitions. Here `value` takes a batch of coalitions as a
boolean array (B, n) (True = the player is present) and returns their values as a float array (B,).

Shapley value of player i: its marginal contribution averaged over the orders in which players could join,

    phi_i = sum_{S ⊆ N∖{i}} |S|! (n - |S| - 1)! / n! · [v(S ∪ {i}) - v(S)].

Pairwise interaction of players i and j (LOUPE's interaction of the coalition R = {i, j}): the Shapley value of
i and j joined into one player, minus the Shapley values of each in the game where the other is absent,

    I_ij = phi([ij] | N∖{i,j} ∪ {[ij]}) - phi(i | N∖{i,j} ∪ {i}) - phi(j | N∖{i,j} ∪ {j})
         = sum_{S ⊆ N∖{i,j}} |S|! (n - |S| - 2)! / (n - 1)! · [v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S)].

(The three games have n - 1 players; a coalition S of the others carries the same weight in each, so the three
sums merge into one.) I_ij > 0: i and j are worth more together than apart (they explain each other); I_ij < 0:
each makes the other redundant. For a unanimity game u_T (v(S) = 1 when T ⊆ S, else 0), phi_i = 1/|T| for i in T
and I_ij = 1/(|T| - 1) for i, j in T, both 0 otherwise; a game is a sum of such games, so these two facts give
exact answers to test against.

Permutation sampling: in a uniformly random order of the n - 1 units N∖{i,j} ∪ {[ij]}, the units before [ij]
form a coalition S with exactly the weight above, so averaging the bracket over `samples` random orders is an
unbiased estimate of I_ij; its standard error is the sample standard deviation over sqrt(samples).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["shapley_exact", "interaction_exact", "interaction_samples", "PairInteractions", "unanimity_game"]

# Exact enumeration evaluates all 2^n coalitions; beyond this many players use permutation sampling.
MAX_EXACT_PLAYERS = 20


def _check_players(n, limit: int | None = None) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ValueError(f"n: expected an int >= 2 (the number of players), got {n!r}")
    if limit is not None and n > limit:
        raise ValueError(f"n: exact enumeration needs 2^n coalitions; expected at most {limit} players, got {n} "
                         "(use interaction_samples)")
    return int(n)


def _evaluate(value: Callable[[np.ndarray], np.ndarray], coalitions: np.ndarray, batch: int) -> np.ndarray:
    """v of every row of coalitions (B, n) bool -> (B,) float64, in chunks of `batch` rows, checked."""
    out = np.empty(len(coalitions), dtype=np.float64)
    for lo in range(0, len(coalitions), batch):
        chunk = coalitions[lo:lo + batch]
        got = np.asarray(value(chunk), dtype=np.float64)
        if got.shape != (len(chunk),):
            raise ValueError(f"value: expected one number per coalition, shape ({len(chunk)},), got {got.shape}")
        if not np.all(np.isfinite(got)):
            raise ValueError("value: expected finite values, got NaN or Inf")
        out[lo:lo + len(chunk)] = got
    return out


def _all_coalitions(n: int) -> np.ndarray:
    """Every subset of n players as bool rows (2^n, n); row m holds player p iff bit p of m is set."""
    codes = np.arange(2**n, dtype=np.int64)
    return ((codes[:, None] >> np.arange(n)) & 1).astype(bool)


def shapley_exact(value, n, batch: int = 4096) -> np.ndarray:
    """Shapley values of all n players by enumerating the 2^n coalitions.  -> (n,) float64.
    Sum of the result = v(N) - v(∅) (efficiency)."""
    n = _check_players(n, MAX_EXACT_PLAYERS)
    coalitions = _all_coalitions(n)  # (2^n, n)
    v = _evaluate(value, coalitions, batch)  # (2^n,)
    size = coalitions.sum(axis=1)  # (2^n,)
    codes = np.arange(2**n)
    phi = np.zeros(n)
    for i in range(n):
        without = ~coalitions[:, i]  # S ⊆ N∖{i}
        s = size[without]
        # weight |S|! (n - |S| - 1)! / n! of each S, then the marginal contribution v(S ∪ {i}) - v(S)
        weight = np.array([math.factorial(k) * math.factorial(n - k - 1) for k in s], dtype=np.float64)
        phi[i] = np.sum(weight * (v[codes[without] | (1 << i)] - v[without])) / math.factorial(n)
    return phi


def interaction_exact(value, n, pairs, batch: int = 4096) -> np.ndarray:
    """Pairwise Shapley interactions I_ij (module docstring) of the given pairs by enumerating the 2^n coalitions.
    pairs: a sequence of (i, j), i != j.  -> (len(pairs),) float64."""
    n = _check_players(n, MAX_EXACT_PLAYERS)
    pairs = _check_pairs(pairs, n)
    coalitions = _all_coalitions(n)
    v = _evaluate(value, coalitions, batch)
    size = coalitions.sum(axis=1)
    codes = np.arange(2**n)
    out = np.empty(len(pairs))
    for p, (i, j) in enumerate(pairs):
        rest = ~coalitions[:, i] & ~coalitions[:, j]  # S ⊆ N∖{i,j}
        s, c = size[rest], codes[rest]
        weight = np.array([math.factorial(k) * math.factorial(n - k - 2) for k in s], dtype=np.float64)
        bracket = v[c | (1 << i) | (1 << j)] - v[c | (1 << i)] - v[c | (1 << j)] + v[c]
        out[p] = np.sum(weight * bracket) / math.factorial(n - 1)
    return out


def _check_pairs(pairs, n: int) -> np.ndarray:
    arr = np.asarray(pairs)
    if arr.ndim != 2 or arr.shape[1] != 2 or len(arr) == 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"pairs: expected a non-empty list of (i, j) player indices, got shape {arr.shape}")
    if np.any(arr < 0) or np.any(arr >= n) or np.any(arr[:, 0] == arr[:, 1]):
        raise ValueError(f"pairs: expected two different players in [0, {n}) per pair")
    return arr.astype(np.int64)


@dataclass
class PairInteractions:
    """Sampled pairwise interactions: `mean` (P,) the estimates, `stderr` (P,) their standard errors (sample std
    over sqrt(samples)), `samples` the random orders per pair, `evaluations` the calls of v in all."""

    mean: np.ndarray
    stderr: np.ndarray
    samples: int
    evaluations: int


def interaction_samples(value, n, pairs, samples, seed: int = 0, batch: int = 4096) -> PairInteractions:
    """Permutation-sampling estimate of I_ij for each pair, with its standard error.

    For each pair and each of `samples` draws: a uniformly random order of the n - 1 units N∖{i,j} ∪ {[ij]}, S =
    the units before [ij], and the bracket v(S ∪ {i,j}) - v(S ∪ {i}) - v(S ∪ {j}) + v(S) (4 evaluations). Seeded:
    the same (n, pairs, samples, seed) draws the same orders. Needs samples >= 2 (for the standard error)."""
    n = _check_players(n)
    pairs = _check_pairs(pairs, n)
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 2:
        raise ValueError(f"samples: expected an int >= 2 (random orders per pair), got {samples!r}")
    rng = np.random.default_rng(seed)
    n_pairs = len(pairs)
    # The position of [ij] in a random order of n - 1 units is uniform in 0..n-2, and the units before it are a
    # uniform subset of that size of the n - 2 others: rank the others by random keys and keep the first `size`.
    size = rng.integers(0, n - 1, size=(n_pairs, samples))  # (P, M) |S|
    keys = rng.random((n_pairs, samples, n))  # (P, M, n) random order of every player
    rows = np.arange(n_pairs)  # with pairs[:, 0] it picks one player per pair, across all M draws
    keys[rows, :, pairs[:, 0]] = np.inf  # i and j are never in S
    keys[rows, :, pairs[:, 1]] = np.inf
    rank = np.argsort(np.argsort(keys, axis=2), axis=2)  # (P, M, n) 0 = first in the order
    base = rank < size[..., None]  # (P, M, n) S
    with_i, with_j = base.copy(), base.copy()
    with_i[rows, :, pairs[:, 0]] = True
    with_j[rows, :, pairs[:, 1]] = True
    both = with_i | with_j
    coalitions = np.stack([both, with_i, with_j, base], axis=2).reshape(-1, n)  # (P * M * 4, n)
    v = _evaluate(value, coalitions, batch).reshape(n_pairs, samples, 4)
    bracket = v[..., 0] - v[..., 1] - v[..., 2] + v[..., 3]  # (P, M)
    return PairInteractions(mean=bracket.mean(axis=1), stderr=bracket.std(axis=1, ddof=1) / np.sqrt(samples),
                            samples=int(samples), evaluations=int(coalitions.shape[0]))


def unanimity_game(coalitions_of: dict[tuple[int, ...], float]) -> Callable[[np.ndarray], np.ndarray]:
    """v(S) = sum_T c_T [T ⊆ S] for the given {T: c_T}: a game whose Shapley values and interactions are known in
    closed form (module docstring); used by the tests and the tutorial."""
    items = [(np.array(t, dtype=np.int64), float(c)) for t, c in coalitions_of.items()]

    def value(s: np.ndarray) -> np.ndarray:
        return sum(c * np.all(s[:, t], axis=1) for t, c in items) + np.zeros(len(s))

    return value

