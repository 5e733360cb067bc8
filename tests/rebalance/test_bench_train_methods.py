"""`rebalance bench train` measures the methods' options beside the baseline (numbers are not asserted: speed
claims come from the benchmark itself, run on an idle machine)."""

from rebalance.cli.bench_train import measure


def test_bench_train_has_the_methods_conditions():
    report = measure(batch_size=4, repeats=1)
    names = set(report["conditions"])
    assert {"itc+itm", "itc (momentum)+itm", "itc+itm, LIMoE"} <= names
    assert all(row["median_ms"] > 0 for row in report["conditions"].values())
