"""`rebalance data make` (write a shapes-world data folder), `rebalance data show` (a PNG grid of scenes) and
`rebalance data ambiguity` (how many images each caption is true of, the caption-content oracles' recall and, on a
trained run, the ITM negatives whose caption is true of them)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option


@click.group(short_help="Make and inspect image-caption folders.")
def data() -> None:
    """Make and inspect image-caption data folders (Karpathy-style JSON + PNGs)."""


def _preset_names() -> list[str]:
    from rebalance_ref.shapes import PRESETS

    return sorted(PRESETS)


@data.command(short_help="Write a shapes-world data folder.")
@click.option("--preset", type=click.Choice(_preset_names()), default="text-poor", show_default=True,
              help="Imbalance preset of the shapes world (see docs/data.md).")
@click.option("--n-train", type=click.IntRange(min=1), default=2000, show_default=True, help="Training images.")
@click.option("--n-val", type=click.IntRange(min=1), default=300, show_default=True, help="Validation images.")
@click.option("--n-test", type=click.IntRange(min=1), default=500, show_default=True, help="Test images.")
@seed_option
@click.option("--size", type=click.IntRange(min=12), default=32, show_default=True, help="Image side in pixels.")
@click.option("--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write (must be empty or absent unless --force).")
@click.option("--force", is_flag=True, help="Write into a non-empty folder (files of the same name are replaced).")
@threads_option
@json_option
def make(preset: str, n_train: int, n_val: int, n_test: int, seed: int, size: int, out: Path, force: bool,
         threads: int, as_json: bool) -> None:
    """Write a shapes-world data folder: images/, train.json, val.json, test.json, metadata.json."""
    set_threads(threads)
    from rebalance_ref.karpathy import write_dataset
    from rebalance_ref.shapes import PRESETS, make_splits

    if seed < 0:
        raise click.BadParameter(f"must be >= 0, got {seed}", param_hint="--seed")
    if out.exists() and any(out.iterdir()) and not force:
        raise click.UsageError(f"--out {out} is not empty; pass --force to write into it anyway")
    splits = make_splits(preset, n_train, n_val, n_test, seed=seed, size=size)
    extra = {"generator": "shapes", "preset": preset, "knobs": PRESETS[preset].to_dict(), "seed": seed,
             "size": size}
    write_dataset(out, splits, extra=extra)
    summary = {"out": str(out), "preset": preset, "seed": seed, "size": size,
               **{f"n_{s}": len(d) for s, d in splits.items()},
               "n_train_captions": sum(map(len, splits["train"].captions))}
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo(f"wrote {out}: {n_train} train / {n_val} val / {n_test} test scenes at {size}x{size}, "
                   f"preset {preset}, seed {seed}")


@data.command(short_help="A PNG grid of scenes and captions.")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Split of the data folder to show.")
@click.option("--n", "n", type=click.IntRange(min=1), default=16, show_default=True, help="Scenes to show.")
@click.option("--out", "out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="PNG to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@click.option("--size", type=click.IntRange(min=8), default=None,
              help="Resize images to this side (default: as recorded, or 64 for folders without metadata).")
@threads_option
def show(data_dir: Path, split: str, n: int, out: Path, force: bool, size: int | None, threads: int) -> None:
    """Write a PNG grid of scenes with their captions (and canonical description, when known)."""
    set_threads(threads)
    if out.exists() and not force:
        raise click.UsageError(f"--out {out} exists; pass --force to replace it")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rebalance_ref.files import atomic_path
    from rebalance_ref.karpathy import DataError, read_dataset

    try:
        has_meta = (data_dir / "metadata.json").is_file()
        loaded = read_dataset(data_dir, image_size=size if size or has_meta else 64, splits=(split,),
                              expect_captions=None)
    except DataError as exc:
        raise click.ClickException(str(exc)) from exc
    if split not in loaded:
        raise click.UsageError(f"{data_dir} has no {split} split")
    ds = loaded[split].subset(range(min(n, len(loaded[split]))))
    cols = min(4, len(ds))
    rows = -(-len(ds) // cols)
    # each scene: the image above, its captions below (canonical first, marked "=")
    fig, axes = plt.subplots(2 * rows, cols, figsize=(3.2 * cols, 5.0 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2] * rows})
    for ax in axes.flat:
        ax.axis("off")
    for i in range(len(ds)):
        image_ax, text_ax = axes[2 * (i // cols), i % cols], axes[2 * (i // cols) + 1, i % cols]
        image_ax.imshow(ds.images[i], interpolation="nearest")
        image_ax.set_title(ds.names[i], fontsize=7)
        lines = [] if ds.canonical is None else ["= " + ds.canonical[i]]
        lines += [f"{j + 1}. {c}" for j, c in enumerate(ds.captions[i])]
        text = "\n".join(textwrap.fill(line, 46, subsequent_indent="   ") for line in lines)
        text_ax.text(0.0, 1.0, text, transform=text_ax.transAxes, fontsize=5.5, va="top", ha="left",
                     family="monospace")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    click.echo(f"wrote {out} ({len(ds)} {split} scenes from {data_dir})")


def _percent(x: float) -> str:
    return f"{x:5.1f}"


@data.command(short_help="Caption ambiguity: the oracle's recall, ITM label noise.")
@click.option("--preset", type=click.Choice(_preset_names()), default="text-poor", show_default=True,
              help="Imbalance preset of the shapes world (ignored with --run: the run's own).")
@click.option("--n-train", type=click.IntRange(min=1), default=None, help="Training images (default as `train`).")
@click.option("--n-val", type=click.IntRange(min=1), default=None, help="Validation images (default as `train`).")
@click.option("--n-test", type=click.IntRange(min=1), default=None, help="Test images (default as `train`).")
@seed_option
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), default=None,
              help="A trained run: its world (preset, sizes, seed) and the ITM label noise of its student.")
@click.option("--which", default="stage1-best", show_default=True, help="The run's checkpoint (with --run).")
@click.option("--batches", type=click.IntRange(min=1), default=200, show_default=True,
              help="Training batches sampled for the ITM label noise (with --run).")
@threads_option
@json_option
def ambiguity(preset: str, n_train: int | None, n_val: int | None, n_test: int | None, seed: int,
              run_dir: str | None, which: str, batches: int, threads: int, as_json: bool) -> None:
    """Per caption, the images it is true of (its mentioned objects matched to distinct objects with every stated
    attribute equal); the literal and the Bayes oracles' expected R@1/5/10 on val and test; with --run, the share of
    the run's ITM negative pairs whose caption is true of the negative image (docs/data.md, "Ambiguity")."""
    set_threads(threads)
    from rebalance import ambiguity as amb

    if run_dir is not None:
        from rebalance_torch.checkpoint import load_student

        _, config, _ = load_student(run_dir, which=which)
        if config.data_dir is not None:
            raise click.UsageError(f"--run {run_dir} trained on a data folder; ambiguity needs a --preset run")
        preset, n_train, n_val, n_test, seed = config.preset, config.n_train, config.n_val, config.n_test, config.seed
    else:
        from rebalance_torch.config import TrainConfig

        default = TrainConfig()
        n_train, n_val, n_test = (n_train or default.n_train, n_val or default.n_val, n_test or default.n_test)
    report = {"preset": preset, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed,
              "oracle": amb.oracle_report(preset, n_train, n_val, n_test, seed, splits=("val", "test"))}
    if run_dir is not None:
        report["itm_label_noise"] = amb.itm_label_noise(run_dir, which=which, batches=batches)
        evaluated = Path(run_dir) / "eval.json"
        if evaluated.is_file():
            report["run_test"] = amb.recall_of_oracle(json.loads(evaluated.read_text()), report["oracle"]["test"])
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"preset {preset}, seed {seed}: {n_train} train / {n_val} val / {n_test} test scenes")
    click.echo("split oracle       R@1 i2t/t2i  R@5 i2t/t2i  R@10 i2t/t2i  R-mean")
    for split, row in report["oracle"].items():
        for name in ("literal", "bayes"):
            r = row[name]
            click.echo(f"{split:<5} {name:<12} {_percent(r['i2t_r1'])} {_percent(r['t2i_r1'])}  "
                       f"{_percent(r['i2t_r5'])} {_percent(r['t2i_r5'])}  {_percent(r['i2t_r10'])} "
                       f"{_percent(r['t2i_r10'])}  {_percent(r['r_mean'])}")
    stats = [(split, row["ambiguity"]) for split, row in report["oracle"].items()]
    if run_dir is not None:
        stats.append(("train", report["itm_label_noise"]["train_ambiguity"]))
    for split, a in stats:
        click.echo(f"{split:<5} other images a caption is true of: median {a['median_other_images']:.1f}, mean "
                   f"{a['mean_other_images']:.1f}, {a['share_ambiguous']:.1f} % of captions true of at least one"
                   + (f"; {a['share_false_of_own']:.1f} % false of their own image" if a["share_false_of_own"]
                      else ""))
    if run_dir is not None:
        noise = report["itm_label_noise"]
        click.echo(f"ITM negatives whose caption is true of the negative image ({noise['batches']} batches of "
                   f"{noise['batch_size']}, {which}): hard {noise['hard']:.1f} % (text->image "
                   f"{noise['hard_text_to_image']:.1f}, image->text {noise['hard_image_to_text']:.1f}); "
                   f"uniformly random {noise['random']:.1f} %")
        from rebalance.report import ITM_PRIOR_LOSS

        if "run_test" in report:
            run = report["run_test"]
            click.echo(f"the run's test R-mean (cosine, its best checkpoint): {run['cos_r_mean']:.1f} = "
                       f"{run['cos_r_mean_of_literal']:.0f} % of the literal oracle's, "
                       f"{run['cos_r_mean_of_bayes']:.0f} % of the Bayes oracle's")

        last = noise["stage1_itm_loss"]
        click.echo(f"ITM loss that this label noise alone forces: {noise['itm_noise_floor']:.3f} nats; the run's "
                   f"last logged stage-1 ITM loss: {'-' if last is None else f'{last:.3f}'} (label prior "
                   f"{ITM_PRIOR_LOSS:.3f})")

COMMANDS = [data]
