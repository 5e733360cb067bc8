"""`python -m rebalance ...` is the `rebalance` command (and what torchrun launches: `torchrun ... -m rebalance
train ...`)."""

from rebalance.cli.main import cli

if __name__ == "__main__":  # pragma: no cover
    cli(prog_name="rebalance")
