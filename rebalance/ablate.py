"""`rebalance ablate`: which part of the objective does what, with paired differences over seeds.

Per seed: one data set, one pair of teachers and one stage-1 run; then every stage-2 condition starts from that
same stage-1 checkpoint, so a condition's difference to the baseline is paired (same data, teachers, init,
batches). Reported: each condition's test metrics minus the baseline's, mean ± std over seeds, plus the baseline's
own mean ± std. Conditions run in parallel processes of one thread each (`jobs`): on the 2-core machines this
project measures on, 2 threads per process ran slower than 1.

Folder (`--out`): `seed{S}/` (stage 1, teachers) with `seed{S}/{condition}/` run folders, `ablation.json`,
`ablation.md`, `plots/ablation.png`.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from rebalance import plots
from rebalance.demo import demo_config
from rebalance.report import code_version, train_and_report
from rebalance_ref.files import write_json_atomic, write_text_atomic
from rebalance_ref.threads import set_threads
from rebalance_torch.checkpoint import checkpoint_path
from rebalance_torch.config import BASELINE_WEIGHTS, OFFICIAL_WEIGHTS, TrainConfig
from rebalance_torch.prepare import prepare
from rebalance_torch.trainer import train

CONDITIONS: dict[str, dict] = {
    "baseline": {"weights": dict(BASELINE_WEIGHTS)},
    "+IIC,TTC": {"weights": {"itc": 1.0, "itm": 2.0, "iic": 1.0, "ttc": 2.0}},
    "+KD": {"weights": {"itc": 1.0, "itm": 2.0, "kd": 2.0, "kdi": 1.0, "kdt": 1.0}},
    "full": {"weights": dict(OFFICIAL_WEIGHTS)},
    "full, KD on [v,t]": {"weights": dict(OFFICIAL_WEIGHTS), "student_relation": "projected"},
}
TABLE_KEYS = (("cos_r_mean", "R-mean cos"), ("itm_r_mean", "R-mean ITM"), ("attr_i2i@10", "I2I attr"),
              ("attr_t2t@10", "T2T attr"), ("attr_i2it@10", "I2IT attr"), ("attr_t2it@10", "T2IT attr"),
              ("rouge_i2i@10", "I2I rouge"), ("rouge_t2t@10", "T2T rouge"), ("rouge_i2it@10", "I2IT rouge"),
              ("rouge_t2it@10", "T2IT rouge"))


# Columns that are not points of a percentage: a precision in [0, 1] and the geometry diagnostics.
NOT_POINTS = ("probe_p5_colour_shape", "modality_gap", "alignment", "uniformity_joint", "uniformity_image",
              "uniformity_text", "alignment_relative")


def _folder(name: str) -> str:
    """A condition's sub-folder: "full, KD on [v,t]" -> "full_kd_on_v_t"."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _stage1_task(config_dict: dict, seed_dir: str) -> dict:
    """Worker: data, teachers (cached in seed_dir/teachers), stage 1 into seed_dir."""
    config = TrainConfig.from_dict(config_dict)
    set_threads(config.threads)
    lines: list[str] = []
    prepared = prepare(config, teachers=True, log=lines.append, teacher_cache=Path(seed_dir) / "teachers")
    summary = train(config, seed_dir, prepared=prepared, stages=(1,), progress=False, log=lines.append,
                    evaluate_test=False, resume=True, label=f"seed {config.seed}: stage 1")
    return {"log": lines, "timings": {**prepared.timings, **summary["timings"]}}


def _condition_task(config_dict: dict, seed_dir: str, run_dir: str, label: str = "condition") -> dict:
    """Worker: one stage-2 condition from the seed's stage-1 checkpoint; returns its test metrics."""
    config = TrainConfig.from_dict(config_dict)
    done = Path(run_dir) / "eval.json"
    if done.is_file() and checkpoint_path(run_dir, 2, "best").is_file():
        return {"log": [f"{run_dir}: done earlier, eval.json reused"], "test": json.loads(done.read_text()),
                "timings": {}}
    set_threads(config.threads)
    lines: list[str] = []
    summary = train_and_report(config, run_dir, init=checkpoint_path(seed_dir, 1, "best"), stages=(2,), progress=False,
                               log=lines.append, resume=True, label=f"seed {config.seed}: stage 2 — {label}")
    return {"log": lines, "test": summary["test"], "timings": summary["timings"]}


def _pipeline(stage1: dict[int, tuple | None], conditions: dict[int, list[tuple]], jobs: int,
              log: Callable[[str], None]) -> dict:
    """Run each seed's stage-1 task (`(fn, *args)`, or None when done earlier), then that seed's condition tasks
    (`(key, (fn, *args))`) as soon as its stage 1 is finished, `jobs` tasks at a time in spawned processes (in
    this process when jobs == 1). A seed's conditions thus overlap the other seeds' stage 1. Returns
    `{key: result}` of the condition tasks."""
    results: dict = {}
    if jobs == 1:
        for seed in stage1:
            if stage1[seed] is not None:
                fn, *args = stage1[seed]
                _log_result(fn(*args), log)
            for key, (fn, *args) in conditions[seed]:
                results[key] = fn(*args)
                _log_result(results[key], log, key)
        return results
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: dict = {}

        def submit_conditions(seed: int) -> None:
            for key, (fn, *args) in conditions[seed]:
                pending[pool.submit(fn, *args)] = ("condition", key)

        for seed, task in stage1.items():
            if task is None:
                submit_conditions(seed)
            else:
                fn, *args = task
                pending[pool.submit(fn, *args)] = ("stage1", seed)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                kind, key = pending.pop(future)
                result = future.result()
                if kind == "stage1":
                    _log_result(result, log)
                    submit_conditions(key)
                else:
                    results[key] = result
                    _log_result(result, log, key)
    return results


def _log_result(result, log: Callable[[str], None], key=None) -> None:
    if not isinstance(result, dict):
        return
    if result.get("log"):
        log("\n".join(result["log"]))
    if key is not None and "test" in result:
        name, seed = key
        log(f"  seed {seed} {name}: R-mean {result['test']['cos_r_mean']:.2f}, "
            f"I2I attr {result['test'].get('attr_i2i@10', float('nan')):.2f}")


def paired_table(results: dict[str, dict[int, dict]], keys=TABLE_KEYS) -> dict:
    """`{"baseline": {key: (mean, std)}, "diff": {condition: {key: (mean, std)}}}` over seeds, where a condition's
    value per seed is its metric minus the baseline's metric of the same seed."""
    def mean_std(values: list[float]) -> tuple[float, float]:
        return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    base = results["baseline"]
    seeds = sorted(base)
    table = {"baseline": {k: mean_std([base[s][k] for s in seeds]) for k, _ in keys if k in base[seeds[0]]},
             "diff": {}}
    for cond, per_seed in results.items():
        if cond == "baseline":
            continue
        table["diff"][cond] = {k: mean_std([per_seed[s][k] - base[s][k] for s in seeds])
                               for k, _ in keys if k in base[seeds[0]]}
    return table


def table_markdown(table: dict, keys=TABLE_KEYS) -> str:
    cols = [(k, label) for k, label in keys if k in table["baseline"]]
    lines = ["| condition | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines.append("| baseline (absolute) | " + " | ".join(f"{table['baseline'][k][0]:.2f} ± "
                                                      f"{table['baseline'][k][1]:.2f}" for k, _ in cols) + " |")
    for cond, row in table["diff"].items():
        lines.append(f"| {cond} − baseline | " + " | ".join(f"{row[k][0]:+.2f} ± {row[k][1]:.2f}" for k, _ in cols)
                     + " |")
    return "\n".join(lines)


def run_ablation(preset: str, seeds: int = 3, jobs: int = 2, out: str | Path | None = None,
                 base: TrainConfig | None = None, conditions: dict[str, dict] | None = None,
                 log: Callable[[str], None] = print, keys=TABLE_KEYS, name: str = "ablate") -> dict:
    """Stage 1 per seed, then every condition per seed from it; returns (and writes) the paired table over `keys`
    ((metric, label) pairs). `name` names the job in the log and the files (`rebalance compare` is one)."""
    if seeds < 1 or jobs < 1:
        raise ValueError(f"seeds and jobs must be >= 1, got seeds={seeds}, jobs={jobs}")
    conditions = conditions or CONDITIONS
    if "baseline" not in conditions:
        raise ValueError("conditions must include 'baseline' (the paired differences are taken against it)")
    base = (base or demo_config()).replace(preset=preset, threads=1)
    out = Path(out or f"runs/{name}-{preset}")
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    seed_dirs = {s: out / f"seed{s}" for s in range(seeds)}
    stage1_tasks = {s: None if (d / "checkpoints" / "stage1-best.pt").is_file() else
                    (_stage1_task, base.replace(seed=s).to_dict(), str(d)) for s, d in seed_dirs.items()}
    condition_tasks = {s: [((name, s), (_condition_task, base.replace(seed=s, teacher_dir=str(d / "teachers"),
                                                                     **changes).to_dict(), str(d),
                                        str(d / _folder(name)), name))
                           for name, changes in conditions.items()] for s, d in seed_dirs.items()}
    log(f"{name} {preset}: {seeds} seeds × {len(conditions)} conditions, {jobs} process(es); stage 1 for "
        f"{sum(t is not None for t in stage1_tasks.values())} seed(s)")
    done = _pipeline(stage1_tasks, condition_tasks, jobs, log)
    results: dict[str, dict[int, dict]] = {name: {} for name in conditions}
    for (condition, s), result in sorted(done.items(),
                                         key=lambda item: (item[0][1], list(conditions).index(item[0][0]))):
        results[condition][s] = result["test"]
    table = paired_table(results, keys)
    elapsed = time.perf_counter() - tic
    labels = [(k, label) for k, label in keys if k in table["baseline"]]
    title = f"{preset}: condition − baseline, mean ± std over {seeds} seeds"
    plots.plot_ablation(table["diff"], [kl for kl in labels if kl[0] not in NOT_POINTS],
                        out / "plots" / "ablation.png", title=title)
    if any(k in NOT_POINTS for k, _ in labels):  # fractions and geometry on an axis of their own
        plots.plot_ablation(table["diff"], [kl for kl in labels if kl[0] in NOT_POINTS],
                            out / "plots" / "geometry.png", title=title,
                            ylabel="difference vs baseline (fraction or distance)")
    record = {"preset": preset, "seeds": seeds, "jobs": jobs, "config": base.to_dict(),
              "conditions": {k: v for k, v in conditions.items()}, "results": results, "table": table,
              "seconds": {"total": elapsed}, "code": code_version()}
    write_json_atomic(out / "ablation.json", record, indent=2)
    md = table_markdown(table, keys)
    write_text_atomic(out / "ablation.md", f"# {name.capitalize()}: {preset}, {seeds} seeds\n\n{md}\n\n"
                                         f"Wall time {elapsed:.0f} s with {jobs} process(es).\n\n"
                                         f"![ablation](plots/ablation.png)\n"
                                         + ("![geometry](plots/geometry.png)\n"
                                            if (out / "plots" / "geometry.png").is_file() else ""))
    log(md)
    log(f"{name} {preset}: {elapsed:.0f} s")
    return record
