import json

from click.testing import CliRunner

from rebalance.cli.bench_retrieval import COMMAND
from rebalance.retrieval_bench import paired_ratio, random_columns, side_by_side


def test_random_columns_are_unit_and_seeded():
    import numpy as np

    columns = random_columns(1000, 8, seed=3, chunk=300)
    assert columns.shape == (8, 1000) and columns.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(columns, axis=0), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(columns, random_columns(1000, 8, seed=3, chunk=300))


def test_side_by_side_times_each_call():
    calls = []
    times = side_by_side({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, clock="cpu")
    assert set(times) == {"a", "b"} and all(len(t) == 2 and min(t) >= 0 for t in times.values())
    assert calls[:2] == ["a", "b"]  # one warm-up call each, in order
    assert paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0]) == 2.0


def test_bench_retrieval_command_reports_every_ratio():
    result = CliRunner().invoke(COMMAND, ["--sizes", "3000", "--dim", "16", "--batch", "8", "--repeats", "1",
                                          "--encode-batches", "1", "--length", "4", "--clock", "cpu", "--json"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [(r["tower"], r["batch"]) for r in report["encode"]] == [("image", 1), ("text", 1)]
    assert all(r["ratio"] > 0 for r in report["encode"])
    (row,) = report["search"]
    assert row["gallery"] == 3000 and row["b1_bandwidth_fraction"] > 0 and row["batch_matmul_ratio"] > 0
    assert report["peak_rss_mib"] > 0
    assert [(r["bits"], r["code_bytes_per_item"], r["float_bytes_per_item"]) for r in report["codes"]] == [
        (32, 4, 64), (64, 8, 64), (128, 16, 64)]
    assert all(r["hamming_ms"] > 0 and r["float_speedup"] > 0 for r in report["codes"])
    text = CliRunner().invoke(COMMAND, ["--sizes", "500", "--dim", "8", "--batch", "4", "--repeats", "1",
                                        "--skip-encode"], catch_exceptions=False)
    assert text.exit_code == 0 and "exact top-10 search" in text.output and "exact Hamming top-10" in text.output
    bad = CliRunner().invoke(COMMAND, ["--sizes", "500", "--skip-encode", "--bits", "12"])
    assert bad.exit_code != 0 and "multiples of 8" in bad.output
    none = CliRunner().invoke(COMMAND, ["--sizes", "500", "--dim", "8", "--batch", "4", "--repeats", "1",
                                        "--skip-encode", "--bits", "", "--json"], catch_exceptions=False)
    assert json.loads(none.output)["codes"] == []
