"""Options shared by several commands, and the one call that applies `--threads`."""

from __future__ import annotations

import click

from rebalance_ref import threads


def set_threads(n: int) -> None:
    """Apply `--threads` through `rebalance_ref.threads.set_threads` (BLAS, OpenMP and, once imported, torch),
    with the error named as the option."""
    try:
        threads.set_threads(n)
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--threads") from None


threads_option = click.option(
    "--threads", type=int, default=1, show_default=True, help="Threads for torch/BLAS in this process."
)
seed_option = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
                           help="Random seed (a whole number >= 0).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
