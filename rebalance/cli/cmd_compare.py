"""`rebalance compare`: the paper and the field's other answers to modal imbalance, paired over seeds."""

from __future__ import annotations

import json

import click

from rebalance.cli.options import json_option, set_threads


@click.command("compare", short_help="The paper beside other methods, paired.")
@click.option("--preset", required=True, help="Imbalance preset of the shapes world (docs/data.md).")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True, help="Seeds (one stage 1 each).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Parallel processes (one thread each).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Folder [default: runs/compare-PRESET].")
@click.option("--fast", is_flag=True, help="The demo's --fast sizes (a quick look, not a result).")
@click.option("--methods", default=None,
              help="Comma-separated subset of the methods (baseline always included); default: all.")
@json_option
def compare_command(preset, seeds, jobs, out, fast, methods, as_json):
    """Baseline, the paper's recipe, GCL, m²-Mix and ALBEF momentum distillation, each from one shared stage 1
    per seed: differences to the baseline, mean ± std over seeds (docs/compare.md)."""
    from rebalance.compare import METHODS, run_comparison
    from rebalance.demo import demo_config

    set_threads(1)
    chosen = None
    if methods is not None:
        names = {m.strip().lower(): m.strip() for m in methods.split(",") if m.strip()}
        known = {m.lower(): m for m in METHODS}
        unknown = [names[n] for n in names if n not in known]
        if unknown:
            raise click.BadParameter(f"unknown method(s) {', '.join(unknown)}; expected some of "
                                     f"{', '.join(METHODS)}", param_hint="--methods")
        chosen = {m: METHODS[m] for m in METHODS if m == "baseline" or m.lower() in names}
    record = run_comparison(preset, seeds=seeds, jobs=jobs, out=out, base=demo_config(fast=fast), methods=chosen,
                            log=lambda m: click.echo(m, err=as_json))
    if as_json:
        click.echo(json.dumps(record["table"], indent=2))


COMMANDS = [compare_command]
