import pytest

from rebalance_ref.timing import median, paired_ratio, sample_seconds, side_by_side


def test_side_by_side_alternates_after_one_warm_up_each():
    calls = []
    times = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, clock="cpu")
    assert set(times) == {"a", "b"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())
    assert calls[:2] == ["a", "b"]  # one warm-up call each, in order


def test_sample_seconds_repeats_short_calls_inside_a_sample():
    calls = []
    sample_seconds(lambda: calls.append(1))
    assert len(calls) > 2  # a call far under 20 ms is repeated to fill the sample


def test_ratios_and_medians():
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0
    assert median([3.0, 1.0, 2.0]) == 2.0


def test_bad_clock_and_repeats():
    with pytest.raises(ValueError, match="clock must be one of"):
        side_by_side({"a": lambda: None}, repeats=1, clock="gpu")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        side_by_side({"a": lambda: None}, repeats=0)
