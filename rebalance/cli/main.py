"""Entry point of the `rebalance` console script.

Commands are discovered from the modules `rebalance/cli/cmd_*.py`; each module lists its click commands in
`COMMANDS`. Adding a command therefore never means editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

from rebalance import cli as cli_package


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rebalance")
def cli() -> None:
    """rebalance: structure-aware distillation for vision-language retrieval, CPU-first."""


def _register_commands(group: click.Group) -> None:
    for info in sorted(pkgutil.iter_modules(cli_package.__path__), key=lambda m: m.name):
        if not info.name.startswith("cmd_"):
            continue
        module = importlib.import_module(f"{cli_package.__name__}.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            group.add_command(command)


_register_commands(cli)

if __name__ == "__main__":  # pragma: no cover
    cli()
