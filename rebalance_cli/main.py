"""Entry point of the `rebalance` console script.

Commands are discovered from the modules `rebalance_cli/cmd_*.py`; each module lists its click commands in
`COMMANDS`. Adding a command therefore never means editing this file.
"""

from __future__ import annotations

import importlib
import pkgutil

import click

import rebalance_cli


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rebalance")
def cli() -> None:
    """rebalance: structure-aware distillation for vision-language retrieval, CPU-first."""


def _register_commands(group: click.Group) -> None:
    for info in sorted(pkgutil.iter_modules(rebalance_cli.__path__), key=lambda m: m.name):
        if not info.name.startswith("cmd_"):
            continue
        module = importlib.import_module(f"rebalance_cli.{info.name}")
        for command in getattr(module, "COMMANDS", []):
            group.add_command(command)


_register_commands(cli)

if __name__ == "__main__":  # pragma: no cover
    cli()
