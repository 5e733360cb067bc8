"""`rebalance bench train`: the cost of the full objective against ITC + ITM alone, side by side in one run.

One training step = forward, backward and the AdamW update of the student (and, in stage 2, the objective's own
parameters), on one batch of the text-poor shapes world with teacher features of the teachers' width. Conditions:
the compute-matched baseline (ITC + 2·ITM), the full objective (1, 2, 1, 2, 2, 1, 1, KD on the fused z), and the
full objective with KD on the projected [v, t], and the methods' options: ITC with ALBEF's momentum
distillation (EMA copy, queue of 512) and a LIMoE student (8 experts in the last block of each tower, shared by
the towers, top-1, with its four auxiliary terms; docs/experts.md) on the baseline, GCL in place of ITC
(gcl + 2·ITM, docs/gcl.md) and m²-Mix added to the baseline (ITC + 2·ITM + 0.1·m2mix, docs/mixup.md). Samples
alternate between the conditions (A B C A B C ..., `rebalance_ref.timing.side_by_side`), so a neighbour's load
hits all of them alike; the figures are the median per condition and the median of the paired ratios to the
baseline.
`--demo-run DIR` also prints the wall time per phase a `rebalance demo` run recorded in `DIR/results.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, set_threads, threads_option


def measure(batch_size: int = 64, repeats: int = 15, seed: int = 0, model: str = "tiny") -> dict:
    """Median step time of each condition and its ratio to the baseline: the trainer's own `train_step` (τ clamp
    included, input checks skipped as after a stage's first step)."""
    import functools

    import numpy as np
    import torch

    from rebalance_ref.shapes import make_world
    from rebalance_ref.timing import median, paired_ratio, side_by_side
    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch import input_checks
    from rebalance_torch.config import BASELINE_WEIGHTS, MOE_TERMS, TrainConfig
    from rebalance_torch.data import Collate, PairDataset
    from rebalance_torch.objective import build_objective, compute_losses
    from rebalance_torch.prepare import build_student
    from rebalance_torch.schedule import batch_rows
    from rebalance_torch.step import make_optimizer, train_step
    from rebalance_torch.teachers import TEACHER_WIDTH

    world = make_world(max(64, batch_size), "text-poor", seed=seed)
    tokenizer = Tokenizer.build(world.pairs()[1])
    dataset = PairDataset(world, tokenizer)
    rows = batch_rows(seed, 2, 0, len(dataset), batch_size)
    batch = Collate()([dataset[int(r)] for r in rows])
    rng = np.random.default_rng(seed)
    a = torch.from_numpy(rng.standard_normal((batch_size, TEACHER_WIDTH), dtype=np.float32))
    b = torch.from_numpy(rng.standard_normal((batch_size, TEACHER_WIDTH), dtype=np.float32))
    base = TrainConfig(model=model, seed=seed, batch_size=batch_size)
    conditions = {"itc+itm": base.replace(weights=dict(BASELINE_WEIGHTS)), "full (KD on z)": base,
                  "full (KD on [v,t])": base.replace(student_relation="projected"),
                  "itc (momentum)+itm": base.replace(weights=dict(BASELINE_WEIGHTS), itc_momentum=0.995),
                  "itc+itm, LIMoE": base.replace(model_overrides={"moe": {"experts": 8}},
                                                 weights={**BASELINE_WEIGHTS, **dict.fromkeys(MOE_TERMS, 0.005)}),
                  "gcl+itm": base.replace(weights={"gcl": 1.0, "itm": 2.0}),
                  "itc+itm+m2mix": base.replace(weights={**BASELINE_WEIGHTS, "m2mix": 0.1})}

    def make_step(config):
        student = build_student(config, tokenizer)
        objective = build_objective(student, config, TEACHER_WIDTH, TEACHER_WIDTH)
        optimizer = make_optimizer([student, objective], config)
        step_losses = functools.partial(compute_losses, student, objective, config, 2)

        def step():
            with input_checks.skipped():
                train_step(step_losses, optimizer, student, config, batch, config.lr, a, b)

        return step

    samples = side_by_side({name: make_step(cfg) for name, cfg in conditions.items()}, repeats)
    return {"batch_size": batch_size, "model": model, "repeats": repeats, "threads": torch.get_num_threads(),
            "text_length": int(batch.ids.shape[1]),
            "conditions": {name: {"median_ms": 1000 * median(s),
                                  "ratio_to_itc_itm": paired_ratio(s, samples["itc+itm"])}
                           for name, s in samples.items()}}


@click.command("train", short_help="Step time: full objective vs ITC + ITM.")
@click.option("--batch-size", type=click.IntRange(min=2), default=64, show_default=True,
              help="Caption rows per training step.")
@click.option("--repeats", type=click.IntRange(min=1), default=15, show_default=True,
              help="Alternating samples per condition.")
@click.option("--model", default="tiny", show_default=True, help="Student size preset (tiny, small).")
@click.option("--demo-run", type=click.Path(file_okay=False, exists=True),
              help="A `rebalance demo` folder whose per-phase wall time to print as well.")
@threads_option
@json_option
def train_bench(batch_size, repeats, model, demo_run, threads, as_json):
    """Step time of the full objective and the methods' options vs ITC + ITM alone (goal: ≤ 1.3× for the paper's
    objective, ≤ 1.5× for momentum distillation; LIMoE's is reported), and a demo's time per phase."""
    import torch  # noqa: F401  (imported first, so that set_threads reaches it)

    set_threads(threads)
    report = measure(batch_size=batch_size, repeats=repeats, model=model)
    if demo_run is not None:
        results = Path(demo_run) / "results.json"
        if not results.is_file():
            raise click.BadParameter(f"{results} does not exist (not a demo run folder)", param_hint="--demo-run")
        report["demo_phases_s"] = json.loads(results.read_text())["phases_s"]
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"training step, {model} student, batch {batch_size}, text length {report['text_length']}, "
               f"{report['threads']} thread(s); median of {repeats} alternating samples")
    for name, row in report["conditions"].items():
        click.echo(f"  {name:<20} {row['median_ms']:8.1f} ms   {row['ratio_to_itc_itm']:.2f}x")
    if "demo_phases_s" in report:
        click.echo("demo wall time per phase (s): "
                   + ", ".join(f"{k} {v:.1f}" for k, v in report["demo_phases_s"].items()))


COMMAND = train_bench
