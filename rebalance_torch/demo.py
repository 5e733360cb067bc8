"""`rebalance demo`: the main job on the embedded default, in one run folder.

make data (the text-poor shapes world) -> train the teachers -> stage 1 (ITC + 2·ITM) -> stage 2 twice from the
same stage-1 checkpoint: the compute-matched baseline (ITC + ITM) and the full objective -> evaluate all three on
the test split -> export the full student (ONNX bundle) and run one search with onnxruntime -> a markdown and
JSON table, plots, and a short printed summary.

Folder (`--out`, default `runs/demo`): the top level is the full run (its `checkpoints/` hold stage 1 and the full
stage 2, so `load_student(out)` gives the full student); `baseline/` is the baseline's run folder;
`bundle/` is the exported student with the test split as its gallery; `results.json` / `results.md` hold the
table, the differences, the search and the wall time per phase.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from rebalance_torch.config import BASELINE_WEIGHTS, TrainConfig

# The default demo: ≤ 180 s on an idle 2-core CPU (seed 0 of the text-poor ablation's baseline and full conditions).
# `fast`: ≤ 45 s, for CI and the tutorials (a smaller world, fewer steps; a look at the pipeline, not a result).
DEMO: dict = {}  # TrainConfig's defaults are the demo: text-poor, 1000/200/500 images, 500 + 250 steps at batch 64
FAST = dict(preset="text-poor", n_train=300, n_val=100, n_test=100, stage1_steps=100, stage2_steps=50,
            batch_size=32, eval_every=50, k_test=8, teacher_epochs=3)
DIFF_KEYS = ("cos_r_mean", "itm_r_mean", "rouge_i2i@10", "rouge_t2t@10", "rouge_i2it@10", "rouge_t2it@10",
             "attr_i2i@10", "attr_t2t@10", "attr_i2it@10", "attr_t2it@10", "modality_gap")


def demo_config(fast: bool = False, seed: int = 0, device: str = "cpu", threads: int = 1, **overrides) -> TrainConfig:
    """The demo's config (`FAST` sizes when `fast`), with any field overridden."""
    return TrainConfig(**{**(FAST if fast else DEMO), "seed": seed, "device": device, "threads": threads, **overrides})


def run_demo(out: str | Path = "runs/demo", fast: bool = False, seed: int = 0, device: str = "cpu",
             threads: int = 1, log: Callable[[str], None] = print, progress: bool = True,
             config: TrainConfig | None = None) -> dict:
    """Run the whole demo into `out` and return its results (also written to `out/results.json`)."""
    from rebalance_torch import plots
    from rebalance_torch.checkpoint import checkpoint_path
    from rebalance_torch.evaluate import markdown_table, probe_oracle, probe_table
    from rebalance_torch.train import prepare, train

    out = Path(out)
    if (out / "checkpoints").is_dir():
        raise ValueError(f"--out {out} already holds a run; choose a new folder or delete it")
    out.mkdir(parents=True, exist_ok=True)
    config = config or demo_config(fast, seed, device, threads)
    phases: dict[str, float] = {}
    tic = time.perf_counter()
    prepared = prepare(config, teachers=True, log=log, teacher_cache=out / "teachers")
    phases.update(prepared.timings)

    stage1 = train(config, out, prepared=prepared, stages=(1,), progress=progress, log=log)
    phases["stage1"] = stage1["timings"]["stage1"]
    phases["eval"] = stage1["timings"]["eval"]
    baseline = train(config.replace(weights=dict(BASELINE_WEIGHTS)), out / "baseline", prepared=prepared,
                     init=checkpoint_path(out, 1, "best"), stages=(2,), progress=progress, log=log)
    phases["stage2 baseline"] = baseline["timings"]["stage2"]
    phases["eval"] += baseline["timings"]["eval"]
    full = train(config, out, prepared=prepared, stages=(2,), progress=progress, log=log)
    phases["stage2 full"] = full["timings"]["stage2"]
    phases["eval"] += full["timings"]["eval"]

    rows = {"stage 1 (ITC+ITM)": stage1["test"], "stage 2 baseline (ITC+ITM)": baseline["test"],
            "stage 2 full objective": full["test"]}
    diff = {k: full["test"][k] - baseline["test"][k] for k in DIFF_KEYS if k in full["test"]}
    check_file = out / "teacher_check.json"
    check = json.loads(check_file.read_text()) if check_file.is_file() else {}
    labels = [(k, k.replace("rouge_", "").replace("attr_", "attr ")) for k in DIFF_KEYS if k in diff]
    plots.plot_ablation({"full - baseline": {k: (v, 0.0) for k, v in diff.items()}}, labels,
                        out / "plots" / "full_vs_baseline.png", title=f"demo ({config.preset}, seed {config.seed})")

    # --- export (the export developer's `exports.export.export_and_search`): bundle + one torch-free search -----
    tic_export = time.perf_counter()
    search = export_step(out, prepared.splits["test"], threads=config.threads)
    phases["export+search"] = time.perf_counter() - tic_export
    if search.get("error"):
        log(f"export skipped: {search['error']}")

    phases["total"] = time.perf_counter() - tic
    results = {"config": config.to_dict(), "rows": rows, "full_minus_baseline": diff, "teacher_check": check,
               "search": search, "phases_s": phases, "probe_oracle": probe_oracle(prepared.splits["test"])}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = markdown_table(rows)
    reading = summarise(diff)
    md = [f"# rebalance demo ({config.preset}, seed {config.seed}{', fast' if fast else ''})", "", table, "",
          "Full objective minus baseline (test split, points): "
          + ", ".join(f"{k} {v:+.2f}" for k, v in diff.items()), "", reading, "",
          "Search probe (test split, precision@5 of templated text queries against the true attributes):", "",
          probe_table(rows, results["probe_oracle"]), "",
          "Teacher check (validation NDCG@10, teacher vs stage-1 student): "
          + ", ".join(f"{k} {r['teacher']:.1f} vs {r['student']:.1f}" for k, r in check.items()), "",
          "Wall time per phase (s): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()), "",
          f"One search in the exported bundle (`{search.get('bundle')}`): \"{search.get('query')}\"", "", "```",
          search.get("text", search.get("error", "")), "```", "",
          "![full vs baseline](plots/full_vs_baseline.png)", "![traces](plots/traces.png)",
          "![relations](plots/relations.png)", ""]
    (out / "results.md").write_text("\n".join(md))
    with open(out / "report.md", "a") as handle:
        handle.write("\n# Demo summary\n\n" + "\n".join(md[2:]) + "\n")
    return results


def export_step(out: Path, test_split, threads: int = 1) -> dict:
    """Export the full student to `out/bundle`, index the test split into it and run one text search there
    through the onnxruntime-only `Retriever`. Needs the `export` extra (onnx, onnxruntime); without it the demo
    still finishes and says why the export was skipped."""
    try:
        from exports.export import export_and_search
        from exports.runtime import format_hits
    except ImportError as err:
        return {"error": f"the export needs onnx and onnxruntime ({err})"}
    # Text-to-image: the gallery holds both modalities, and a caption's nearest items are other captions.
    bundle, query, hits = export_and_search(out, out / "bundle", test_split, k=5, threads=threads, modality="image")
    return {"bundle": str(bundle), "query": query, "hits": [h.to_dict() for h in hits], "text": format_hits(hits)}


def summarise(diff: dict[str, float]) -> str:
    """One plain sentence per claim of the paper: cross-modal held? single-modal and mixed up?"""
    def word(x: float, tol: float = 0.5) -> str:
        return "up" if x > tol else "down" if x < -tol else "about the same"

    parts = []
    if "cos_r_mean" in diff:
        parts.append(f"cross-modal R-mean {word(diff['cos_r_mean'], 1.0)} ({diff['cos_r_mean']:+.2f} by cosine, "
                     f"{diff.get('itm_r_mean', float('nan')):+.2f} with ITM re-ranking)")
    for key, name in (("attr_i2i@10", "I2I"), ("attr_t2t@10", "T2T"), ("attr_i2it@10", "I2IT"),
                      ("attr_t2it@10", "T2IT")):
        if key in diff:
            parts.append(f"{name} NDCG@10 {word(diff[key])} ({diff[key]:+.2f}, attribute relevance)")
    return "Full vs baseline: " + "; ".join(parts) + ". One seed; see `rebalance ablate` for seed spread."


def print_summary(results: dict, echo: Callable[[str], None] = print) -> None:
    from rebalance_torch.evaluate import markdown_table, probe_table

    echo(markdown_table(results["rows"]))
    echo(summarise(results["full_minus_baseline"]))
    echo("search probe (test split, precision@5):")
    echo(probe_table(results["rows"], results.get("probe_oracle")))
    search = results.get("search", {})
    if "text" in search:
        echo(f'search (onnxruntime bundle {search["bundle"]}): "{search["query"]}"')
        echo(search["text"])
    echo("phases (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["phases_s"].items()))
