"""`rebalance teachers`: train the frozen image and text teachers on a data folder and cache their features."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option


@click.command(short_help="Train the frozen teachers, cache features.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A folder written by `rebalance data make` (or Karpathy-style JSON + images/).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the features (.npy), report.json and the teachers' weights (empty or absent "
                   "unless --force).")
@click.option("--force", is_flag=True, help="Write into a non-empty --out (features of the same name are replaced).")
@click.option("--image-size", type=click.IntRange(min=8, max=1024), default=None,
              help="Side the images are resized to, a multiple of 8 [default: as the data folder's metadata.json "
                   "records; needed for Karpathy-style folders without one].")
@click.option("--skip-short", is_flag=True,
              help="Drop val/test images with fewer than 5 captions (with a warning) instead of stopping.")
@click.option("--image-teacher", "kind", type=click.Choice(["supervised", "ssl"]), default="supervised",
              show_default=True,
              help="supervised: trained on the scenes' attribute labels (synthetic data only); "
                   "ssl: self-supervised on two augmented views (any data).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs for both teachers [default: supervised 20, ssl 10, text 10].")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to train the teachers.")
@seed_option
@threads_option
@json_option
def teachers(data_dir: Path, out_dir: Path, force: bool, image_size: int | None, skip_short: bool, kind: str,
             epochs: int | None, device: str, seed: int, threads: int, as_json: bool) -> None:
    """Train the image and text teachers on the training split, freeze them, and write their features.

    Writes train_image.npy / train_text.npy (one row per training caption, the official format), val_/test_
    features, report.json (each teacher's test NDCG@10 against raw pixels / bag of words), the weights and the
    text teacher's tokenizer.
    """
    import torch

    from rebalance_ref.karpathy import read_dataset
    from rebalance_torch.teachers import train_teachers

    set_threads(threads)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise click.UsageError(f"--out {out_dir} is not empty (it may hold features already); pass --force to "
                               f"replace them")
    if image_size is not None and image_size % 8:
        raise click.BadParameter(f"must be a multiple of 8 (the image teacher halves it three times), got "
                                 f"{image_size}", param_hint="--image-size")
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available in this torch build or on this machine", param_hint="--device")
    try:
        splits = read_dataset(data_dir, image_size=image_size, on_short="skip" if skip_short else "error")
    except (ValueError, FileNotFoundError) as exc:
        message = str(exc)
        if "records no image size" in message:  # a Karpathy-style folder without metadata.json
            raise click.BadParameter(f"{data_dir} records no image size (no metadata.json): give --image-size, "
                                     f"e.g. --image-size 64", param_hint="--image-size") from None
        message = message.replace("or read with short images skipped", "or pass --skip-short")
        raise click.BadParameter(message, param_hint="--data") from None
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
