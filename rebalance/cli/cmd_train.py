"""`rebalance train`, `rebalance eval`, `rebalance demo`, `rebalance ablate`: the trainer's commands.

torch is imported inside the command bodies only (the CLI group stays importable without it).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option
from rebalance_torch.config import CHOICES, DEVICES, RECIPES, TrainConfig, parse_weights

_DEVICE = click.option("--device", type=click.Choice(DEVICES), default=None,
                       help="Where to train/evaluate (default cpu; cuda when asked for and present).")


def _check_device(device: str | None) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA was asked for but torch sees no GPU", param_hint="--device")


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def _silent(_message: str) -> None:
    """The log of a --quiet run: nothing on the terminal (the run folder's log.txt still holds every line)."""


_RECIPE = click.option("--recipe", type=click.Choice(tuple(RECIPES)), default=None,
                       help="Stage 2's objective: official (the paper's code) or rebalanced (ours: the remedies "
                            "that helped on validation, docs/training.md); other options override it.")
_QUIET = click.option("--quiet", is_flag=True,
                      help="No progress bar and no progress lines on stderr (log.txt in the run folder keeps them).")


# --- train -----------------------------------------------------------------------------------------------------

# The options that set one TrainConfig field each: (field, option name or None for --field-name, help). Types and
# choices come from TrainConfig itself (its annotations and `CHOICES`), so nothing here repeats a name list.
_CONFIG_OPTIONS = (
    ("preset", None, "Imbalance preset of the shapes world (docs/data.md)."),
    ("data_dir", "--data", "A data folder (`rebalance data make` / Karpathy-style) instead of the shapes world."),
    ("n_train", None, "Training images of the shapes world."),
    ("n_val", None, "Validation images (model selection)."),
    ("n_test", None, "Test images (the reported metrics)."),
    ("image_size", None, "Image side in pixels."),
    ("model", None, "Student size preset: tiny or small (docs/models.md)."),
    ("image_pretrain", None, "How the student's image tower starts stage 1: pre-trained on images alone with the "
                             "scenes' labels (supervised; synthetic data), self-supervised (ssl), or random (none)."),
    ("image_pretrain_epochs", None, "Epochs of the image tower's pre-training."),
    ("stage1_steps", None, "Steps of stage 1 (ITC + 2·ITM after the tower's pre-training); 0 skips it."),
    ("stage2_steps", None, "Steps of stage 2 (from stage 1's best); 0 skips it."),
    ("batch_size", None, "Caption rows per global batch."),
    ("lr", None, "Peak learning rate of AdamW."),
    ("warmup", None, "Fraction of a stage's steps spent warming the lr up."),
    ("distance", None, "Distance of the structure terms (mae is the paper's)."),
    ("tau2", None, "Relation temperature τ2: learnable (official) or fixed."),
    ("lam", None, "How λ is parametrised: unconstrained (official) or sigmoid."),
    ("student_relation", None, "Student relation from the fused z (official) or the projected [v, t]."),
    ("image_teacher", None, "Image teacher: supervised on scene labels, or self-supervised (ssl)."),
    ("teacher_dir", None, "Use teacher features from this folder (train_image.npy/train_text.npy or the official "
                          "train_{image,text}_embed_regu.npy) instead of training teachers."),
    ("teacher_epochs", None, "Epochs of each teacher's training (default: per teacher, docs/models.md)."),
    ("eval_every", None, "Validate (and checkpoint) every N steps."),
    ("k_test", None, "Top-k re-ranked by ITM in evaluation."),
    ("augment", None, "Training-image augmentation: none or mild."),
    ("itc_momentum", None, "ALBEF momentum distillation in stage 2's ITC with this EMA coefficient (0.995; "
                           "docs/momentum.md)."),
    ("itc_queue", None, "Rows of momentum distillation's feature queue."),
    ("itm_negatives", None, "Under torchrun: ITM hard negatives from each process's rows (official) or the "
                            "gathered batch."),
    ("mix_beta", None, "m²-Mix (weight m2mix): λ ~ Beta(β, β) drawn once per step."),
    ("mix_tau", None, "m²-Mix: the fixed temperature of the mixed hard-negative loss."),
    ("teacher_tau", None, "Temperature of IIC/TTC: the ITC τ (shared, official) or their own learnable τ "
                          "(own, initialised from stage 1's τ)."),
    ("teacher_warmup", None, "Fraction of stage 2 in which the teacher terms train only their own parameters "
                             "(the student detached in them); 0 = official."),
    ("teacher_ramp", None, "Fraction of stage 2 (after the warm-up) over which the teacher terms' weights rise "
                           "linearly from 0; 0 = official."),
    ("teacher_scale", None, "Multiplier on the teacher terms' weights (IIC, TTC, KD, KDI, KDT); 1 = official."),
)
_PATH_FIELDS = ("data_dir", "teacher_dir")


def _config_option(field_name: str, flag: str | None, help_text: str):
    """A click option that sets `TrainConfig.<field_name>` (None = keep the config's value)."""
    annotation = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[field_name]
    if field_name in CHOICES:
        kind = click.Choice(CHOICES[field_name])
    elif field_name in _PATH_FIELDS:
        kind = click.Path(file_okay=False, exists=True)
    else:
        kind = {"int": int, "float": float, "str": str}[str(annotation).split("|")[0].strip()]
    return click.option(flag or "--" + field_name.replace("_", "-"), field_name, type=kind, default=None,
                        help=help_text)


def _config_options(command):
    for field_name, flag, help_text in reversed(_CONFIG_OPTIONS):
        command = _config_option(field_name, flag, help_text)(command)
    return command


def _parse_tau_clamp(text: str) -> list[float] | None:
    """`--tau-clamp LOW,HIGH` or `none`."""
    if text.strip().lower() == "none":
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH (two numbers) or 'none'; got {text!r}",
                                 param_hint="--tau-clamp") from None


def _parse_stages(text: str) -> tuple[int, ...]:
    """`--stages 1`, `2` or `1,2`."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or any(p not in ("1", "2") for p in parts):
        raise click.BadParameter(f"expected 1, 2 or 1,2; got {text!r}", param_hint="--stages")
    return tuple(int(p) for p in parts)


@click.command("train", short_help="Train a student: stage 1, then stage 2.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="A config.json to start from; options given here override it.")
@_config_options
@click.option("--weights", "weights", help="Stage-2 loss weights by name, e.g. 'itc=1,itm=2,iic=1,ttc=2,kd=2'; "
              "names left out weigh 0. Default: the official 1,2,1,2,2,1,1.")
@click.option("--tau-clamp", help="Clamp τ to LOW,HIGH after each step, or 'none' (official: none).")
@_RECIPE
@click.option("--stages", default="1,2", show_default=True, help="Which stages to run: 1, 2 or 1,2.")
@click.option("--init", type=click.Path(dir_okay=False, exists=True),
              help="Start stage 2 from this stage-1 checkpoint (e.g. another run's checkpoints/stage1-best.pt).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoints, exactly.")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="Under torchrun: the process group's backend (auto: nccl on cuda, gloo on cpu).")
@click.option("--seed", type=int, default=None, help="Random seed of data, model and batches (default: the "
              "config's, 0).")
@_DEVICE
@threads_option
@_QUIET
@json_option
def train_command(out, config_file, weights, tau_clamp, recipe, stages, init, resume, backend, seed, threads, quiet,
                  as_json, **options):
    """Train a student: stage 1 (ITC + 2·ITM), then stage 2 (the full objective, or --weights).

    Under torchrun (`torchrun --nproc_per_node=N -m rebalance train ...`) every process trains on its
    share of each global batch of --batch-size rows; see docs/distributed.md."""
    from rebalance.report import train_and_report
    from rebalance_torch.distributed import from_environment

    set_threads(threads)
    _check_device(options.get("device"))
    if config_file:
        config = TrainConfig.load(config_file)
    elif resume and (Path(out) / "config.json").is_file():
        config = TrainConfig.load(Path(out) / "config.json")
    else:
        config = TrainConfig()
    if recipe is not None:
        config = config.with_recipe(recipe)
    changes = {k: v for k, v in options.items() if v is not None}
    if weights is not None:
        changes["weights"] = parse_weights(weights)
    if tau_clamp is not None:
        changes["tau_clamp"] = _parse_tau_clamp(tau_clamp)
    changes["seed"] = seed if seed is not None else config.seed
    changes["threads"] = threads
    config = config.replace(**changes)
    stage_list = _parse_stages(stages)
    ctx = from_environment(device=config.device, backend=backend)
    try:
        summary = train_and_report(config, out, init=init, stages=stage_list, resume=resume,
                                   progress=not (as_json or quiet), log=_silent if quiet else _echo_err, dist_ctx=ctx)
    finally:
        ctx.close()
    if not ctx.is_main:  # process 0 reports for all
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif "test" in summary:
        from rebalance_torch.evaluate import markdown_table

        click.echo(markdown_table({Path(out).name: summary["test"]}))
        click.echo(f"run folder: {out}")


# --- eval ------------------------------------------------------------------------------------------------------

@click.command("eval", short_help="Evaluate a run with the paper's protocol.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), required=True,
              help="Training run folder.")
@click.option("--which", default="best", show_default=True, help="Checkpoint of the run to evaluate.",
              type=click.Choice(["best", "last", "stage1-best", "stage1-last", "stage2-best", "stage2-last"]))
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]),
              help="Split to evaluate on (val is the one model selection used).")
@_DEVICE
@threads_option
@json_option
def eval_command(run_dir, which, split, device, threads, as_json):
    """Evaluate a run's student with the paper's protocol (R@K by cosine and ITM, NDCG for I2I/T2T/I2IT/T2IT)."""
    from rebalance_torch.evaluate import evaluate_run, markdown_table

    set_threads(threads)
    _check_device(device)
    results = evaluate_run(run_dir, which=which, split=split, device=device or "cpu")
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    click.echo(markdown_table({f"{Path(run_dir).name} ({which}, {split})": results}))
    for group in ("cos_", "itm_"):
        click.echo("  " + ", ".join(f"{k} {v:.1f}" for k, v in results.items() if k.startswith(group)))
    click.echo("  " + ", ".join(f"{k} {v:.1f}" for k, v in results.items() if "@" in k))
    click.echo("  " + ", ".join(f"{k} {v:.3f}" for k, v in results.items() if "@" not in k and "_r" not in k
                                and "mean" not in k))


# --- demo ------------------------------------------------------------------------------------------------------

@click.command("demo", short_help="The main job, end to end, in one folder.")
@click.option("--fast", is_flag=True, help="A smaller, quicker demo (≤ 45 s on 2 cores) for CI and tutorials.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default runs/demo, or runs/demo-fast with --fast); must not hold a run yet.")
@click.option("--recipe", type=click.Choice(tuple(RECIPES)), default=None,
              help="The full run's stage-2 objective: official (the paper's code) or rebalanced (ours, "
                   "docs/training.md). Default: the demo's own (rebalance.demo.DEMO_RECIPE).")
@seed_option
@_DEVICE
@threads_option
@_QUIET
@json_option
def demo_command(fast, out, recipe, seed, device, threads, quiet, as_json):
    """The main job: data -> teachers -> stage 1 -> baseline and full stage 2 -> evaluation, in one folder."""
    from rebalance.demo import print_summary, run_demo

    set_threads(threads)
    _check_device(device)
    out = out or ("runs/demo-fast" if fast else "runs/demo")
    results = run_demo(out, fast=fast, seed=seed, device=device or "cpu", threads=threads,
                       log=_silent if quiet else _echo_err, progress=not (as_json or quiet), recipe=recipe)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    print_summary(results, click.echo)
    click.echo(f"run folder: {out} (results.md, report.md, plots/)")


# --- ablate ----------------------------------------------------------------------------------------------------

@click.command("ablate", short_help="Paired ablation of the objective's terms.")
@click.option("--preset", required=True, help="Shapes-world preset: balanced, text-poor, image-poor, ...")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Seeds per condition (0, 1, ...).")
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Parallel processes (one thread each).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default runs/ablate-PRESET.")
@click.option("--fast", is_flag=True, help="The demo's --fast sizes (a quick look, not a result).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="Base config.json (default: the demo's config).")
@click.option("--conditions", default=None,
              help="Comma-separated subset of: baseline, +IIC,TTC (write +IIC/TTC), +KD, full, projected. "
                   "Default: all five.")
@click.option("--remedies", is_flag=True,
              help="Instead of the terms: the official full objective beside each remedy for stage 2's start "
                   "(own τ, warm-up, ramp, lower teacher weights, KD on [v,t]), one at a time.")
@json_option
def ablate_command(preset, seeds, jobs, out, fast, config_file, conditions, remedies, as_json):
    """Baseline / +IIC,TTC / +KD / full / full with KD on [v,t] (or, with --remedies, the full objective and each
    remedy): paired differences vs baseline and vs stage 1 over seeds, on the test and validation splits."""
    from rebalance.ablate import CONDITIONS, REMEDIES, REMEDY_KEYS, TABLE_KEYS, run_ablation
    from rebalance.demo import demo_config
    from rebalance_torch.config import TrainConfig

    set_threads(1)
    aliases = {"baseline": "baseline", "+iic/ttc": "+IIC,TTC", "+kd": "+KD", "full": "full",
               "projected": "full, KD on [v,t]"}
    chosen = REMEDIES if remedies else None
    if conditions is not None and remedies:
        raise click.BadParameter("--conditions and --remedies are two different sets; give one",
                                 param_hint="--remedies")
    if conditions is not None:
        names = [c.strip().lower() for c in conditions.split(",") if c.strip()]
        unknown = [c for c in names if c not in aliases]
        if unknown or "baseline" not in names:
            raise click.BadParameter(f"expected a comma-separated subset of {', '.join(aliases)} including "
                                     f"baseline; got {conditions!r}", param_hint="--conditions")
        chosen = {aliases[c]: CONDITIONS[aliases[c]] for c in names}
    base = TrainConfig.load(config_file) if config_file else demo_config(fast=fast)
    record = run_ablation(preset, seeds=seeds, jobs=jobs, out=out or (f"runs/remedies-{preset}" if remedies else None),
                          base=base, conditions=chosen, keys=REMEDY_KEYS if remedies else TABLE_KEYS,
                          gradients=remedies, log=_echo_err if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(record["table"], indent=2))


COMMANDS = [train_command, eval_command, demo_command, ablate_command]
