"""`rebalance train`, `rebalance eval`, `rebalance demo`, `rebalance ablate`: the trainer's commands.

torch is imported inside the command bodies only (the CLI group stays importable without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance_cli.options import json_option, seed_option, set_threads, threads_option

_DEVICE = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                       help="Where to train/evaluate (default cpu; cuda when asked for and present).")


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


def _check_device(device: str | None) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA was asked for but torch sees no GPU", param_hint="--device")


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


# --- train -----------------------------------------------------------------------------------------------------

# CLI option -> TrainConfig field, for the options that map one to one.
_FIELDS = {"preset": "preset", "data": "data_dir", "n_train": "n_train", "n_val": "n_val", "n_test": "n_test",
           "image_size": "image_size", "model": "model", "stage1_steps": "stage1_steps",
           "stage2_steps": "stage2_steps", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup",
           "distance": "distance", "tau2": "tau2", "lam": "lam", "student_relation": "student_relation",
           "image_teacher": "image_teacher", "teacher_dir": "teacher_dir", "teacher_epochs": "teacher_epochs",
           "eval_every": "eval_every", "k_test": "k_test", "augment": "augment", "device": "device",
           "itm_negatives": "itm_negatives"}


@click.command("train")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Run folder.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="A config.json to start from; options given here override it.")
@click.option("--preset", help="Shapes-world preset (balanced, text-poor, image-poor, ...).")
@click.option("--data", type=click.Path(file_okay=False, exists=True),
              help="A data folder (`rebalance data make` / Karpathy-style) instead of the shapes world.")
@click.option("--n-train", type=int)
@click.option("--n-val", type=int)
@click.option("--n-test", type=int)
@click.option("--image-size", type=int)
@click.option("--model", type=click.Choice(["tiny", "small"]), help="Student size preset.")
@click.option("--stage1-steps", type=int, help="Steps of stage 1 (ITC + 2·ITM from scratch); 0 skips it.")
@click.option("--stage2-steps", type=int, help="Steps of stage 2 (from stage 1's best); 0 skips it.")
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Peak learning rate of AdamW.")
@click.option("--warmup", type=float, help="Fraction of a stage's steps spent warming the lr up.")
@click.option("--weights", "weights", help="Stage-2 loss weights by name, e.g. 'itc=1,itm=2,iic=1,ttc=2,kd=2'; "
              "names left out weigh 0. Default: the official 1,2,1,2,2,1,1.")
@click.option("--distance", type=click.Choice(["mae", "mse", "cumsum_l1", "wasserstein"]))
@click.option("--tau2", type=click.Choice(["learnable", "fixed"]), help="Relation temperature τ2.")
@click.option("--lam", type=click.Choice(["unconstrained", "sigmoid"]), help="How λ is parametrised.")
@click.option("--tau-clamp", help="Clamp τ to LOW,HIGH after each step, or 'none' (official: none).")
@click.option("--student-relation", type=click.Choice(["fused", "projected"]),
              help="Student relation from the fused z (official) or the projected [v, t].")
@click.option("--image-teacher", type=click.Choice(["supervised", "ssl"]))
@click.option("--teacher-dir", type=click.Path(file_okay=False, exists=True),
              help="Use teacher features from this folder (train_image.npy/train_text.npy or the official "
                   "train_{image,text}_embed_regu.npy) instead of training teachers.")
@click.option("--teacher-epochs", type=int)
@click.option("--eval-every", type=int, help="Validate (and checkpoint) every N steps.")
@click.option("--k-test", type=int, help="Top-k re-ranked by ITM in evaluation.")
@click.option("--augment", type=click.Choice(["none", "mild"]))
@click.option("--stages", default="1,2", show_default=True, help="Which stages to run: 1, 2 or 1,2.")
@click.option("--init", type=click.Path(dir_okay=False, exists=True),
              help="Start stage 2 from this stage-1 checkpoint (e.g. another run's checkpoints/stage1-best.pt).")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoints, exactly.")
@click.option("--itm-negatives", type=click.Choice(["local", "global"]),
              help="Under torchrun: ITM hard negatives from each process's rows (official) or the gathered batch.")
@click.option("--backend", type=click.Choice(["auto", "gloo", "nccl"]), default="auto", show_default=True,
              help="Under torchrun: the process group's backend (auto: nccl on cuda, gloo on cpu).")
@click.option("--seed", type=int, default=None, help="Random seed of data, model and batches (default: the "
              "config's, 0).")
@_DEVICE
@threads_option
@json_option
def train_command(out, config_file, weights, tau_clamp, stages, init, resume, backend, seed, threads, as_json,
                  **options):
    """Train a student: stage 1 (ITC + 2·ITM), then stage 2 (the full objective, or --weights).

    Under torchrun (`torchrun --nproc_per_node=N -m rebalance_torch.train ...`) every process trains on its
    share of each global batch of --batch-size rows; see docs/distributed.md."""
    set_threads(threads)
    import torch

    from rebalance_torch.config import TrainConfig, parse_weights
    from rebalance_torch.distributed import from_environment
    from rebalance_torch.train import train

    torch.set_num_threads(threads)
    _check_device(options.get("device"))
    try:
        if config_file:
            config = TrainConfig.load(config_file)
        elif resume and (Path(out) / "config.json").is_file():
            config = TrainConfig.load(Path(out) / "config.json")
        else:
            config = TrainConfig()
        changes = {_FIELDS[k]: v for k, v in options.items() if v is not None}
        if weights is not None:
            changes["weights"] = parse_weights(weights)
        if tau_clamp is not None:
            changes["tau_clamp"] = None if tau_clamp.strip().lower() == "none" else \
                [float(x) for x in tau_clamp.split(",")]
        changes["seed"] = seed if seed is not None else config.seed
        changes["threads"] = threads
        config = config.replace(**changes)
        stage_list = tuple(int(s) for s in stages.split(",") if s.strip())
        if not stage_list or any(s not in (1, 2) for s in stage_list):
            raise click.BadParameter(f"expected 1, 2 or 1,2; got {stages!r}", param_hint="--stages")
        ctx = from_environment(device=config.device, backend=backend)
        try:
            summary = train(config, out, init=init, stages=stage_list, resume=resume, progress=not as_json,
                            log=_echo_err, dist_ctx=ctx)
        finally:
            ctx.close()
    except ValueError as err:
        raise _fail(err) from None
    if not ctx.is_main:  # process 0 reports for all
        return
    if as_json:
        click.echo(json.dumps(summary, indent=2, default=str))
    elif "test" in summary:
        from rebalance_torch.evaluate import markdown_table

        click.echo(markdown_table({Path(out).name: summary["test"]}))
        click.echo(f"run folder: {out}")


# --- eval ------------------------------------------------------------------------------------------------------

@click.command("eval")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, exists=True), required=True)
@click.option("--which", default="best", show_default=True,
              type=click.Choice(["best", "last", "stage1-best", "stage1-last", "stage2-best", "stage2-last"]))
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val"]))
@_DEVICE
@threads_option
@json_option
def eval_command(run_dir, which, split, device, threads, as_json):
    """Evaluate a run's student with the paper's protocol (R@K by cosine and ITM, NDCG for I2I/T2T/I2IT/T2IT)."""
    set_threads(threads)
    import torch

    from rebalance_torch.evaluate import evaluate_run, markdown_table

    torch.set_num_threads(threads)
    _check_device(device)
    try:
        results = evaluate_run(run_dir, which=which, split=split, device=device or "cpu")
    except ValueError as err:
        raise _fail(err) from None
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

@click.command("demo")
@click.option("--fast", is_flag=True, help="A smaller, quicker demo (≤ 45 s on 2 cores) for CI and tutorials.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Run folder (default runs/demo, or runs/demo-fast with --fast); must not hold a run yet.")
@seed_option
@_DEVICE
@threads_option
@json_option
def demo_command(fast, out, seed, device, threads, as_json):
    """The main job: data -> teachers -> stage 1 -> baseline and full stage 2 -> evaluation, in one folder."""
    set_threads(threads)
    import torch

    from rebalance_torch.demo import print_summary, run_demo

    torch.set_num_threads(threads)
    _check_device(device)
    out = out or ("runs/demo-fast" if fast else "runs/demo")
    try:
        results = run_demo(out, fast=fast, seed=seed, device=device or "cpu", threads=threads,
                           log=_echo_err, progress=not as_json)
    except ValueError as err:
        raise _fail(err) from None
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    print_summary(results, click.echo)
    click.echo(f"run folder: {out} (results.md, report.md, plots/)")


# --- ablate ----------------------------------------------------------------------------------------------------

@click.command("ablate")
@click.option("--preset", required=True, help="Shapes-world preset: balanced, text-poor, image-poor, ...")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--jobs", type=click.IntRange(min=1), default=2, show_default=True,
              help="Parallel processes (one thread each).")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Default runs/ablate-PRESET.")
@click.option("--fast", is_flag=True, help="The demo's --fast sizes (a quick look, not a result).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, exists=True),
              help="Base config.json (default: the demo's config).")
@click.option("--conditions", default=None,
              help="Comma-separated subset of: baseline, +IIC,TTC (write +IIC/TTC), +KD, full, projected. "
                   "Default: all five.")
@json_option
def ablate_command(preset, seeds, jobs, out, fast, config_file, conditions, as_json):
    """Baseline / +IIC,TTC / +KD / full / full with KD on [v,t]: paired differences vs baseline over seeds."""
    set_threads(1)
    import torch

    from rebalance_torch.ablate import CONDITIONS, run_ablation
    from rebalance_torch.config import TrainConfig
    from rebalance_torch.demo import demo_config

    torch.set_num_threads(1)
    aliases = {"baseline": "baseline", "+iic/ttc": "+IIC,TTC", "+kd": "+KD", "full": "full",
               "projected": "full, KD on [v,t]"}
    chosen = None
    if conditions is not None:
        names = [c.strip().lower() for c in conditions.split(",") if c.strip()]
        unknown = [c for c in names if c not in aliases]
        if unknown or "baseline" not in names:
            raise click.BadParameter(f"expected a comma-separated subset of {', '.join(aliases)} including "
                                     f"baseline; got {conditions!r}", param_hint="--conditions")
        chosen = {aliases[c]: CONDITIONS[aliases[c]] for c in names}
    try:
        base = TrainConfig.load(config_file) if config_file else demo_config(fast=fast)
        record = run_ablation(preset, seeds=seeds, jobs=jobs, out=out, base=base, conditions=chosen,
                              log=_echo_err if as_json else click.echo)
    except ValueError as err:
        raise _fail(err) from None
    if as_json:
        click.echo(json.dumps(record["table"], indent=2))


COMMANDS = [train_command, eval_command, demo_command, ablate_command]
