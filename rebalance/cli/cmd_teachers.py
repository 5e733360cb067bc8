"""`rebalance teachers`: train the frozen image and text teachers on a data folder and cache their features."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option


@click.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A folder written by `rebalance data make` (or Karpathy-style JSON + images/).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the features (.npy), report.json and the teachers' weights.")
@click.option("--image-teacher", "kind", type=click.Choice(["supervised", "ssl"]), default="supervised",
              show_default=True,
              help="supervised: trained on the scenes' attribute labels (synthetic data only); "
                   "ssl: self-supervised on two augmented views (any data).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs for both teachers [default: supervised 20, ssl 10, text 10].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@seed_option
@threads_option
@json_option
def teachers(data_dir: Path, out_dir: Path, kind: str, epochs: int | None, device: str, seed: int, threads: int,
             as_json: bool) -> None:
    """Train the image and text teachers on the training split, freeze them, and write their features.

    Writes train_image.npy / train_text.npy (one row per training caption, the official format), val_/test_
    features, report.json (each teacher's test NDCG@10 against raw pixels / bag of words), the weights and the
    text teacher's tokenizer.
    """
    import torch

    from rebalance_ref.karpathy import read_dataset
    from rebalance_torch.teachers import train_teachers

    set_threads(threads)
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available in this torch build or on this machine", param_hint="--device")
    try:
        splits = read_dataset(data_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise click.BadParameter(str(exc), param_hint="--data") from exc
    if "train" not in splits:
        raise click.BadParameter(f"{data_dir} has no train split", param_hint="--data")
    if kind == "supervised" and splits["train"].attributes is None:
        raise click.BadParameter(
            f"the supervised image teacher learns from scene attributes, and {data_dir} has none (real image-caption "
            "data); use --image-teacher ssl, or supply your own features as .npy", param_hint="--image-teacher")
    log = (lambda message: click.echo(message, err=True)) if as_json else click.echo
    result = train_teachers(splits, kind=kind, seed=seed, epochs=epochs, device=device, log=log)
    result.save(out_dir)
    summary = {"out": str(out_dir), "features": {k: list(v.shape) for k, v in result.features.items()},
               "report": result.report}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {', '.join(f'{k}.npy {tuple(v.shape)}' for k, v in result.features.items())}, "
               f"report.json and the teachers' weights to {out_dir}")


COMMANDS = [teachers]
