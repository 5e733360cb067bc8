"""Timing for the benchmarks (`rebalance bench ...`): compared calls are sampled side by side.

Samples of the compared calls alternate (round robin) after one warm-up call each, so that a busy neighbour on a
shared machine slows both sides alike; a call shorter than 20 ms is repeated inside its sample (timeit-style).
Report medians, and ratios as the median of ratios of samples taken next to each other (`paired_ratio`). The
clock is wall time by default; "cpu" counts this process's CPU time, which a neighbour disturbs much less (with
one thread per process the two agree on an idle machine). NumPy only: both the torch side and the torch-free
retriever benchmark with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
MIN_SAMPLE_S = 0.02


def sample_seconds(fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per call of `fn` in one sample: calls shorter than MIN_SAMPLE_S are repeated inside the sample."""
    start = clock()
    fn()
    first = clock() - start
    if first >= MIN_SAMPLE_S:
        return first
    inner = max(1, math.ceil(MIN_SAMPLE_S / max(first, 1e-7)))
    start = clock()
    for _ in range(inner):
        fn()
    return (clock() - start) / inner


def side_by_side(calls: dict[str, Callable[[], object]], repeats: int, clock: str = "wall") -> dict[str, list[float]]:
    """Samples (seconds per call) of each named call, taken in alternation after one warm-up call each."""
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for fn in calls.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            samples[name].append(sample_seconds(fn, CLOCKS[clock]))
    return samples


def median(samples: list[float]) -> float:
    """The median of a list of samples, as a float."""
    return float(np.median(samples))


def paired_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over repeats of the ratio of two calls sampled next to each other (robust to a busy neighbour)."""
    return float(np.median(np.asarray(numerator) / np.asarray(denominator)))
