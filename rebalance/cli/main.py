"""Entry point of the `rebalance` console script.

Commands are discovered from the modules `rebalance/cli/cmd_*.py`; each module lists its click commands in
`COMMANDS`. Adding a command therefore never means editing this file.

The error boundary: whatever a command raises reaches the user as one line on stderr and exit code 1 — a bad
input or file (ValueError and its kin, which name the file, the field and what was expected), a file the system
cannot read or write, a diverged training run; anything else as "unexpected <type>: <message>". `--debug` (or
`REBALANCE_DEBUG=1`) shows the traceback instead.
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import click

from rebalance import cli as cli_package

# Errors that mean "the input or the environment is wrong", not "rebalance has a bug".
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def one_line(err: BaseException) -> str:
    """The error as one line: user errors as their message, others with their type."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, USER_ERRORS):
        return text
    return f"unexpected {type(err).__name__}: {text} (rerun with --debug for the traceback)"


class ErrorBoundary(click.Group):
    """A click group whose commands' exceptions become one-line errors unless debugging."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as err:  # noqa: BLE001 - the boundary: every other error becomes one line
            if ctx.params.get("debug") or os.environ.get("REBALANCE_DEBUG"):
                raise
            raise click.ClickException(one_line(err)) from None


@click.group(cls=ErrorBoundary, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rebalance")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error (also: REBALANCE_DEBUG=1).")
def cli(debug: bool) -> None:
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
