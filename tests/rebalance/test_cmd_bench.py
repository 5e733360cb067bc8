import json
import textwrap

import click
import pytest
from click.testing import CliRunner

from rebalance.cli.cmd_bench import register_benchmarks
from rebalance.cli.main import cli


def test_bench_lists_the_discovered_ref_benchmark():
    result = CliRunner().invoke(cli, ["bench", "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "ref" in result.output


def _package(tmp_path, monkeypatch, name, modules):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for module, text in modules.items():
        (pkg / f"{module}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    return __import__(name)


def test_register_benchmarks_takes_each_modules_command(tmp_path, monkeypatch):
    command = """
        import click

        @click.command("{0}")
        def run():
            click.echo("{0} ran")

        COMMAND = run
    """
    package = _package(tmp_path, monkeypatch, "fake_bench_pkg", {
        "bench_alpha": command.format("alpha"), "bench_beta": command.format("beta"), "other": command.format("no")})
    group = click.Group("bench")
    register_benchmarks(group, package)
    assert sorted(group.commands) == ["alpha", "beta"]
    assert CliRunner().invoke(group, ["beta"]).output == "beta ran\n"


def test_register_benchmarks_rejects_a_module_without_command(tmp_path, monkeypatch):
    package = _package(tmp_path, monkeypatch, "fake_bench_bad", {"bench_broken": "VALUE = 1\n"})
    with pytest.raises(TypeError, match="fake_bench_bad.bench_broken must expose one click command as COMMAND"):
        register_benchmarks(click.Group("bench"), package)


def test_bench_ref_quick_json_agrees_with_its_baselines():
    result = CliRunner().invoke(cli, ["bench", "ref", "--quick", "--json", "--repeats", "1", "--distance", "mae",
                                      "--distance", "mse"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    metrics = report["metrics"]
    assert metrics["shape"] == {"images": 60, "captions": 300}
    assert metrics["max_abs_diff"] < 1e-9  # the vectorised metrics equal the official-style loops
    assert set(metrics["rows"]) == {"recall", "ndcg_i2i", "ndcg_t2t", "total"}
    assert all(row["ours_s"] > 0 and row["ratio"] > 0 for row in metrics["rows"].values())
    assert report["rouge"]["max_abs_diff"] < 1e-6 and report["rouge"]["full_shape"] == [300, 60]
    rows = report["distill"]
    assert {(r["B"], r["dtype"], r["distance"]) for r in rows} == {
        (8, d, m) for d in ("float32", "float64") for m in ("mae", "mse")}
    for row in rows:
        assert row["grad_z_rel_diff"] < (1e-4 if row["dtype"] == "float32" else 1e-10)
        assert row["numpy_s"] > 0 and row["torch_over_numpy"] > 0


def test_bench_ref_rejects_bad_batch_sizes():
    result = CliRunner().invoke(cli, ["bench", "ref", "--batch-sizes", "64,x"])
    assert result.exit_code == 2
    assert "--batch-sizes" in result.output and "comma-separated integers" in result.output
    result = CliRunner().invoke(cli, ["bench", "ref", "--batch-sizes", "1"])
    assert result.exit_code == 2 and "must be >= 2" in result.output
