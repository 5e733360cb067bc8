"""`rebalance gap`: the modality gap of a trained run (its vector and length), the shift experiment on its test
split, and with `--cone` the cone effect at initialisation (docs/gap.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, set_threads, threads_option


@click.command("gap", short_help="Mind the Gap: a run's modality gap.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="Run folder (rebalance train / demo).")
@click.option("--which", default="best", show_default=True, help="Checkpoint: best, last, stage1-best, ...")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]),
              help="Split whose embeddings are measured.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default: RUN/gap.")
@click.option("--cone", is_flag=True, help="Also the cone effect: random MLPs by depth and the run's student at "
              "initialisation (seeds 0, 1, 2).")
@threads_option
@json_option
def gap_command(run_dir, which, split, out, cone, threads, as_json):
    """Gap vector and distance of a run, loss vs shifted gap at several temperatures (figures and gap.json)."""
    import numpy as np  # noqa: F401  (NumPy and torch first, so that set_threads reaches them)

    from rebalance import gap as gap_app
    from rebalance_ref import gap
    from rebalance_ref.files import save_npy_atomic, write_json_atomic

    set_threads(threads)
    out = Path(out) if out is not None else Path(run_dir) / "gap"
    result = gap_app.run_gap(run_dir, which=which, split=split)
    curve = result["shift"]
    minima = {f"{tau:g}": float(curve["gap"][int(np.argmin(curve["loss"][i]))]) for i, tau in enumerate(curve["tau"])}
    report = {"run": str(run_dir), "which": which, "split": split, "modality_gap": result["modality_gap"],
              "mean_cosine_image": result["mean_cosine_image"], "mean_cosine_text": result["mean_cosine_text"],
              "shift_loss_minimum_at_gap": minima,
              "shift": {k: np.asarray(v).tolist() for k, v in curve.items()}}
    out.mkdir(parents=True, exist_ok=True)
    save_npy_atomic(out / "gap_vector.npy", result["gap_vector"].astype(np.float32))
    gap_app.plot_shift(curve, out / "shift.png", title=f"shift experiment ({Path(run_dir).name}, {split})")
    if cone:
        from rebalance_torch.checkpoint import load_student

        _, config, _ = load_student(run_dir, which=which)
        curves = {a: gap.random_mlp_cone(activation=a) for a in ("relu", "linear")}
        report["cone"] = {"random_mlp": {a: c.tolist() for a, c in curves.items()},
                          "student_at_init": gap_app.cone_at_init(config)}
        gap_app.plot_cone(curves, report["cone"]["student_at_init"], out / "cone.png")
    write_json_atomic(out / "gap.json", report, indent=2)
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "shift"}, indent=2))
        return
    click.echo(f"modality gap ‖Δ‖ = {report['modality_gap']:.3f} ({split} split, {which} checkpoint); vector in "
               f"{out / 'gap_vector.npy'}")
    click.echo(f"mean cosine within images {report['mean_cosine_image']:.3f}, within captions "
               f"{report['mean_cosine_text']:.3f}")
    click.echo("shift experiment, loss minimum at signed gap: "
               + ", ".join(f"τ={k}: {v:+.2f}" for k, v in minima.items()))
    if cone:
        s = report["cone"]["student_at_init"]
        click.echo("student at init (seeds " + ", ".join(map(str, s["seed"])) + "): mean cosine images "
                   + ", ".join(f"{x:.2f}" for x in s["mean_cosine_image"]) + "; captions "
                   + ", ".join(f"{x:.2f}" for x in s["mean_cosine_text"]) + "; gap "
                   + ", ".join(f"{x:.2f}" for x in s["modality_gap"]))
    click.echo(f"figures and gap.json in {out}")


COMMANDS = [gap_command]
