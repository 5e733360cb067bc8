"""`rebalance probe sae` and `rebalance probe interactions`: look inside a trained student (docs/probes.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from rebalance.cli.options import json_option, seed_option, set_threads, threads_option

run_option = click.option("--run", "runs", required=True, multiple=True, type=click.Path(file_okay=False),
                          help="Run folder (repeat to compare runs, e.g. a demo folder and its baseline/).")
out_option = click.option("--out", "out", default=None, type=click.Path(file_okay=False),
                          help="Folder for the figures and JSON (default: <first run>/probes).")
which_option = click.option("--which", default="best", show_default=True, help="Checkpoint: best, last, ...")


def _labels(runs) -> list[str]:
    """A short, unique name per run folder: its name (parent/baseline for a demo's baseline), -2, -3 on repeats."""
    out = []
    for run in runs:
        path = Path(run).resolve()
        name = path.name if path.name != "baseline" else f"{path.parent.name}/baseline"
        out.append(name if name not in out else f"{name}-{out.count(name) + 1}")
    return out


@click.group("probe", short_help="Look inside a student (SAE, interactions).")
def probe() -> None:
    """Probes of what a trained student encodes (concept neurons, word-patch interactions)."""


@probe.command("sae", short_help="Sparse concepts of a run's embeddings.")
@run_option
@out_option
@which_option
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Adam steps.")
@click.option("--width-factor", type=click.IntRange(min=1), default=8, show_default=True,
              help="Neurons per embedding dimension (h = factor * d).")
@click.option("--k", "k", type=click.IntRange(min=1), default=None, help="Active neurons per row [default: d/2].")
@seed_option
@threads_option
@json_option
def sae(runs, out, which, steps, width_factor, k, seed, threads, as_json) -> None:
    """Fit a VL-SAE on a run's test embeddings; score every neuron against the true attributes (AUROC)."""
    set_threads(threads)
    from rebalance import probes

    out = Path(out) if out else Path(runs[0]) / "probes"
    settings = probes.SaeSettings(width_factor=width_factor, k=k, steps=steps, seed=seed)
    results, fitted = {}, {}
    for run, name in zip(runs, _labels(runs), strict=True):
        fitted[name] = probes.sae_probe(run, settings, which=which)
        probes.plot_sae(fitted[name], out / f"sae_{name.replace('/', '_')}.png", title=f"VL-SAE concepts: {name}")
        results[name] = probes.sae_to_json(fitted[name])
    if len(fitted) > 1:
        probes.plot_sae_compare(fitted, out / "sae_compare.png")
    probes.write_json(out / "sae.json", results)
    if as_json:
        click.echo(json.dumps(results, indent=1))
        return
    for name, r in results.items():
        s = r["summary"]
        click.echo(f"{name}: h={s['neurons']} k={s['k']}; neurons firing for images {s['fire_image']}, captions "
                   f"{s['fire_text']}, both {s['fire_both']}; fit {s['seconds']['fit']:.1f} s")
        for group, g in s["per_group"].items():
            click.echo(f"  {group:7s} best-neuron AUROC image {g['image']:.3f} text {g['text']:.3f} "
                       f"(values tracked: image {g['tracked_image']}/{g['values']}, text {g['tracked_text']}/"
                       f"{g['values']})")
    click.echo(f"figures and sae.json in {out}")


@probe.command("interactions", short_help="Word-patch Shapley interactions.")
@run_option
@out_option
@which_option
@click.option("--pairs", type=click.IntRange(min=1), default=8, show_default=True, help="Test pairs to explain.")
@click.option("--samples", type=click.IntRange(min=2), default=16, show_default=True,
              help="Random orders per (word, patch) pair.")
@click.option("--reward", type=click.Choice(["cosine", "itm"]), default="cosine", show_default=True,
              help="The score explained: cosine of v and t, or the ITM matched logit.")
@seed_option
@threads_option
@json_option
def interactions(runs, out, which, pairs, samples, reward, seed, threads, as_json) -> None:
    """Sampled Shapley interactions between caption words and image patches; the grounding check."""
    set_threads(threads)
    from rebalance import probes

    out = Path(out) if out else Path(runs[0]) / "probes"
    settings = probes.InteractionSettings(pairs=pairs, samples=samples, reward=reward, seed=seed)
    results = {}
    for run, name in zip(runs, _labels(runs), strict=True):
        result = probes.interaction_probe(run, settings, which=which)
        probes.plot_interactions(result, out / f"interactions_{reward}_{name.replace('/', '_')}.png")
        results[name] = probes.interactions_to_json(result)
    probes.write_json(out / f"interactions_{reward}.json", results)
    if as_json:
        click.echo(json.dumps({k: {kk: v[kk] for kk in ("check", "evaluations", "median_stderr", "seconds")}
                               for k, v in results.items()}, indent=1))
        return
    for name, r in results.items():
        c = r["check"]
        click.echo(f"{name}: {c['hit_rate']:.0%} of {c['words']} colour/shape words peak on their object's patches "
                   f"(random cell: {c['random_region_rate']:.0%}); mean interaction inside the object "
                   f"{c['mean_inside_object']:+.4f} vs random cell {c['mean_inside_random_region']:+.4f}; "
                   f"{r['evaluations']} evaluations, median s.e. {r['median_stderr']:.5f}, {r['seconds']:.1f} s")
    click.echo(f"figures and interactions_{reward}.json in {out}")


COMMANDS = [probe]
