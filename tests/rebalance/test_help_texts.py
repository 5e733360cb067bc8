"""Every option of every command says what it does, and `rebalance --help` lists each command without cutting
its summary mid-word."""

import click
from click.testing import CliRunner

from rebalance.cli.main import cli


def _commands(group: click.Group, prefix: str = "rebalance"):
    for name, command in sorted(group.commands.items()):
        yield f"{prefix} {name}", command
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix} {name}")


def test_every_option_of_every_command_has_a_help_text():
    missing = [f"{path} {param.opts[0]}" for path, command in _commands(cli) for param in command.params
               if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert missing == []


def test_command_summaries_fit_rebalance_help_uncut():
    for path, command in [("rebalance", cli), *_commands(cli)]:
        if not isinstance(command, click.Group):
            continue
        listing = CliRunner().invoke(command, ["--help"], terminal_width=100).output
        for name, sub in command.commands.items():
            summary = sub.get_short_help_str(limit=45)
            assert not summary.endswith("..."), f"{path} {name}: {summary!r} is cut"
            assert summary and summary in listing, f"{path} {name}"
