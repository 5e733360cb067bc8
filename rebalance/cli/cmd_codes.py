"""`rebalance codes train` and `rebalance codes eval`: binary codes on top of a trained student (docs/codes.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option

run_option = click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, exists=True),
                          help="Training run folder (its student is frozen; heads go to <run>/codes/).")
which_option = click.option("--which", default="best", show_default=True, help="Checkpoint: best, last, ...")


def _ints(value: str, what: str) -> list[int]:
    try:
        out = [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated whole numbers, got {value!r}", param_hint=what) from None
    if not out or any(n < 1 for n in out):
        raise click.BadParameter(f"expected comma-separated positive whole numbers, got {value!r}", param_hint=what)
    return out


@click.group("codes", short_help="Binary codes: train hash heads, measure them.")
def codes() -> None:
    """Binary codes for cheap search over many items: hash heads trained on a run's frozen embeddings."""


@codes.command("train", short_help="Train hash heads on a run's embeddings.")
@run_option
@click.option("--bits", default="32,64,128", show_default=True,
              help="Code widths, comma-separated (each a multiple of 8).")
@click.option("--heads", "kinds", default="separate,shared", show_default=True,
              help="Head kinds to try per width (separate: one head per modality; shared: one for both); the "
                   "better on validation is kept.")
@click.option("--epochs", type=click.IntRange(min=1), default=20, show_default=True,
              help="Passes over the train split's pairs (the best epoch on validation is kept).")
@which_option
@seed_option
@threads_option
@json_option
def train(run_dir, bits, kinds, epochs, which, seed, threads, as_json) -> None:
    """Train hash heads on the run's frozen train-split embeddings, select on validation, write <run>/codes/."""
    set_threads(threads)
    from rebalance import codes as codes_lib

    widths = _ints(bits, "--bits")
    bad = [b for b in widths if b % 8]
    if bad:
        raise click.BadParameter(f"code widths must be multiples of 8 (packed 8 bits a byte), got "
                                 f"{', '.join(map(str, bad))}", param_hint="--bits")
    summary = codes_lib.train_codes(run_dir, widths, [k.strip() for k in kinds.split(",") if k.strip()],
                                    which=which, epochs=epochs, seed=seed,
                                    log=None if as_json else lambda line: click.echo(line, err=True))
    if as_json:
        click.echo(json.dumps({w: {"chosen": r["chosen"], **{k: {kk: c[kk] for kk in ("val_r_mean", "best_epoch",
                                                                                         "seconds")}
                                                            for k, c in r["candidates"].items()}}
                               for w, r in summary["bits"].items()}, indent=1))
        return
    for width, r in summary["bits"].items():
        c = r["candidates"][r["chosen"]]
        click.echo(f"{width} bits: {r['chosen']} heads, validation R-mean {c['val_r_mean']:.2f} (Hamming only; "
                   f"float {summary['val_float']['r_mean']:.2f})")
    click.echo(f"heads in {Path(run_dir) / 'codes'} ({summary['seconds']:.1f} s); `rebalance export` puts them in "
               f"the bundle")


@codes.command("eval", short_help="Float vs codes: recall on a split.")
@run_option
@click.option("--split", default="test", show_default=True, help="Split to measure on.")
@click.option("--shortlist", "shortlists", default="50,100,200", show_default=True,
              help="Hamming shortlist sizes re-ranked exactly by the float embeddings, comma-separated.")
@click.option("--bits", default=None, help="Code widths to measure [default: every trained width].")
@click.option("--untrained", is_flag=True,
              help="Also measure untrained heads (random-hyperplane LSH) of each width: what training adds.")
@which_option
@threads_option
@json_option
def evaluate(run_dir, split, shortlists, bits, untrained, which, threads, as_json) -> None:
    """Cross-modal R@1/5/10 (and the search probe's P@5) of float embeddings vs codes, Hamming-only and
    hash-then-rerank, on one split (test by default; heads were selected on validation)."""
    set_threads(threads)
    from rebalance import codes as codes_lib
    from rebalance_ref.files import write_json_atomic

    result = codes_lib.evaluate_codes(run_dir, split=split, shortlists=_ints(shortlists, "--shortlist"),
                                      which=which, bits=None if bits is None else _ints(bits, "--bits"),
                                      untrained=untrained)
    write_json_atomic(Path(run_dir) / "codes" / f"eval-{split}.json", result, indent=1)
    if as_json:
        click.echo(json.dumps(result, indent=1))
        return
    click.echo(f"{split} split: {result['images']} images, {result['captions']} captions")
    click.echo(codes_lib.results_table(result))
    click.echo(f"written to {Path(run_dir) / 'codes' / f'eval-{split}.json'}")


COMMANDS = [codes]
