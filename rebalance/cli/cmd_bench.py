"""`rebalance bench`: benchmarks that measure speed ratios side by side in one run.

Subcommands are discovered from the modules `rebalance/cli/bench_*.py`; each exposes one click command as
`COMMAND` (e.g. `bench_ref.py` gives `rebalance bench ref`). Adding a benchmark therefore never means editing
this file. Like every command module, a bench module imports torch/onnxruntime only inside its command body, so
that `rebalance --help` stays fast and works without them.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

import click

from rebalance import cli as cli_package


@click.group(short_help="Speed ratios measured side by side.")
def bench() -> None:
    """Benchmarks: timings and speed ratios measured side by side in one run (medians over repeats)."""


def register_benchmarks(group: click.Group, package: ModuleType = cli_package, prefix: str = "bench_") -> None:
    """Add the `COMMAND` of every module `<package>/<prefix>*.py` to `group`, in name order."""
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith(prefix):
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        command = getattr(module, "COMMAND", None)
        if not isinstance(command, click.Command):
            raise TypeError(f"{package.__name__}.{info.name} must expose one click command as COMMAND")
        group.add_command(command)


register_benchmarks(bench)

COMMANDS = [bench]
