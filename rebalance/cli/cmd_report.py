"""`rebalance report tables`: the docs' tables regenerated from recorded runs (`rebalance.recorded`)."""

from __future__ import annotations

import click

from rebalance.recorded import DOCS, RECORDED_DIR, load_records, record_runs, regenerate, render


@click.group("report", short_help="Docs tables from recorded runs.")
def report_group():
    """Docs tables from recorded runs (README.md, docs/results.md)."""


@report_group.command("tables", short_help="Record runs; rewrite the docs' tables.")
@click.option("--demo", "demo", type=click.Path(file_okay=False, exists=True), default=None,
              help="Record this demo run folder (its results.json) first, replacing docs/recorded/demo.json.")
@click.option("--ablation", "ablations", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Record this `rebalance ablate` folder (its ablation.json) first; repeat for several presets.")
@click.option("--recorded", type=click.Path(file_okay=False), default=str(RECORDED_DIR), show_default=True,
              help="Folder of the records.")
@click.option("--write", is_flag=True,
              help="Rewrite the blocks between <!-- NAME:begin --> and <!-- NAME:end --> in FILES (default "
                   "README.md and docs/results.md); without it, print the blocks.")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, exists=True))
def tables_command(demo, ablations, recorded, write, files):
    """Record runs; rewrite the docs' tables from the records.

    Example: rebalance report tables --demo runs/demo --write README.md docs/results.md"""
    if demo or ablations:
        record_runs(demo, list(ablations), recorded, log=lambda m: click.echo(m, err=True))
    if write:
        regenerate(list(files) or list(DOCS), recorded, log=click.echo)
        return
    for name, record in load_records(recorded).items():
        click.echo(f"<!-- {name}:begin -->\n{render(name, record)}\n<!-- {name}:end -->")


COMMANDS = [report_group]
