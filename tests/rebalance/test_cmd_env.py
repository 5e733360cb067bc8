import json

from click.testing import CliRunner

from rebalance.cli.main import cli


def test_env_json_lists_versions_and_threads():
    result = CliRunner().invoke(cli, ["env", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report["versions"]["numpy"] is not None
    assert report["threads"]["cpu_count"] >= 1
