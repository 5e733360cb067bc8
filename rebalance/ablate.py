"""`rebalance ablate`: which part of the objective does what, with paired differences over seeds.

Per seed: one data set, one pair of teachers and one stage-1 run; then every stage-2 condition starts from that
same stage-1 checkpoint, so a condition's difference to the baseline is paired (same data, teachers, init,
batches). Reported: each condition's test metrics minus the baseline's (compute-matched), and minus stage 1's
(what stage 2 added at all), mean ± std over seeds, plus the baseline's and stage 1's own mean ± std; the same
tables on the validation split, the one to choose on. Conditions run in parallel processes of one thread each
(`jobs`): on the 2-core machines this project measures on, 2 threads per process ran slower than 1.

`CONDITIONS` take the objective apart term by term; `REMEDIES` (`rebalance ablate --remedies`) put the official
full objective beside each remedy for stage 2's start, one at a time (docs/training.md, "Remedies").

Folder (`--out`): `seed{S}/` (stage 1, teachers) with `seed{S}/{condition}/` run folders, `ablation.json`,
`ablation.md`, `plots/ablation.png`. Each run folder holds `eval.json` (test) and `eval-val.json` (validation).
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
from rebalance_torch.config import BASELINE_WEIGHTS, OFFICIAL_OBJECTIVE, OFFICIAL_WEIGHTS, TrainConfig
from rebalance_torch.evaluate import evaluate_run
from rebalance_torch.prepare import prepare
from rebalance_torch.trainer import train

CONDITIONS: dict[str, dict] = {
    "baseline": {"weights": dict(BASELINE_WEIGHTS)},
    "+IIC,TTC": {"weights": {"itc": 1.0, "itm": 2.0, "iic": 1.0, "ttc": 2.0}},
    "+KD": {"weights": {"itc": 1.0, "itm": 2.0, "kd": 2.0, "kdi": 1.0, "kdt": 1.0}},
    "full": {"weights": dict(OFFICIAL_WEIGHTS)},
    "full, KD on [v,t]": {"weights": dict(OFFICIAL_WEIGHTS), "student_relation": "projected"},
}
# The official full objective beside each remedy alone (every other remedy field at its official value).
REMEDIES: dict[str, dict] = {
    "baseline": {"weights": dict(BASELINE_WEIGHTS)},
    "full": dict(OFFICIAL_OBJECTIVE),
    "full, own τ": {**OFFICIAL_OBJECTIVE, "teacher_tau": "own"},
    "full, warm-up 20 %": {**OFFICIAL_OBJECTIVE, "teacher_warmup": 0.2},
    "full, ramp 40 %": {**OFFICIAL_OBJECTIVE, "teacher_ramp": 0.4},
    "full, teacher weights ×0.5": {**OFFICIAL_OBJECTIVE, "teacher_scale": 0.5},
    "full, teacher weights ×0.25": {**OFFICIAL_OBJECTIVE, "teacher_scale": 0.25},
    "full, KD on [v,t]": {**OFFICIAL_OBJECTIVE, "student_relation": "projected"},
}
# The remedies' columns: cross-modal recall, single-modal and mixed structure, the search probe, the gap.
REMEDY_KEYS = (("cos_r_mean", "R-mean cos"), ("attr_i2i@10", "I2I attr"), ("attr_t2t@10", "T2T attr"),
               ("attr_i2it@10", "I2IT attr"), ("attr_t2it@10", "T2IT attr"),
               ("probe_p5_colour_shape", "probe P@5 colour+shape"), ("modality_gap", "gap"))
STAGE1 = "stage 1"   # the row of the stage-1 checkpoint every condition of a seed starts from
VAL_FILE = "eval-val.json"
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


def _val_metrics(run_dir: str | Path, which: str, device: str) -> dict:
    """The run's `which` checkpoint on the validation split, kept in `eval-val.json` (computed once)."""
    path = Path(run_dir) / VAL_FILE
    if not path.is_file():
        write_json_atomic(path, evaluate_run(run_dir, which=which, split="val", device=device), indent=2)
    return json.loads(path.read_text())


def _stage1_done(seed_dir: Path) -> bool:
    return all(p.is_file() for p in (seed_dir / "checkpoints" / "stage1-best.pt", seed_dir / "eval.json",
                                      seed_dir / VAL_FILE))


def _stage1_task(config_dict: dict, seed_dir: str) -> dict:
    """Worker: data, teachers (cached in seed_dir/teachers), stage 1 into seed_dir (a finished stage 1 is kept),
    and its best checkpoint evaluated on the test split (`eval.json`) and the validation split."""
    config = TrainConfig.from_dict(config_dict)
    set_threads(config.threads)
    lines: list[str] = []
    prepared = prepare(config, teachers=True, log=lines.append, teacher_cache=Path(seed_dir) / "teachers")
    summary = train(config, seed_dir, prepared=prepared, stages=(1,), progress=False, log=lines.append,
                    resume=True, label=f"seed {config.seed}: stage 1")
    return {"log": lines, "timings": {**prepared.timings, **summary["timings"]}, "test": summary["test"],
            "val": _val_metrics(seed_dir, "stage1-best", config.device)}


def _condition_task(config_dict: dict, seed_dir: str, run_dir: str, label: str = "condition") -> dict:
    """Worker: one stage-2 condition from the seed's stage-1 checkpoint; returns its test metrics."""
    config = TrainConfig.from_dict(config_dict)
    done = Path(run_dir) / "eval.json"
    set_threads(config.threads)
    if done.is_file() and checkpoint_path(run_dir, 2, "best").is_file():
        return {"log": [f"{run_dir}: done earlier, eval.json reused"], "test": json.loads(done.read_text()),
                "val": _val_metrics(run_dir, "stage2-best", config.device), "timings": {}}
    lines: list[str] = []
    summary = train_and_report(config, run_dir, init=checkpoint_path(seed_dir, 1, "best"), stages=(2,), progress=False,
                               log=lines.append, resume=True, label=f"seed {config.seed}: stage 2 — {label}")
    return {"log": lines, "test": summary["test"], "val": _val_metrics(run_dir, "stage2-best", config.device),
            "timings": summary["timings"]}


def _pipeline(stage1: dict[int, tuple | None], conditions: dict[int, list[tuple]], jobs: int,
              log: Callable[[str], None]) -> dict:
    """Run each seed's stage-1 task (`(fn, *args)`, or None when done earlier), then that seed's condition tasks
    (`(key, (fn, *args))`) as soon as its stage 1 is finished, `jobs` tasks at a time in spawned processes (in
    this process when jobs == 1). A seed's conditions thus overlap the other seeds' stage 1. Returns
    `{key: result}` of the condition tasks, and of the stage-1 tasks run here under the key `(STAGE1, seed)`."""
    results: dict = {}
    if jobs == 1:
        for seed in stage1:
            if stage1[seed] is not None:
                fn, *args = stage1[seed]
                results[(STAGE1, seed)] = fn(*args)
                _log_result(results[(STAGE1, seed)], log)
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
                    results[(STAGE1, key)] = result
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


def start_gradients(seed_dir: str | Path, config: TrainConfig, batches: int = 4) -> dict[str, dict[str, float]]:
    """Stage 2's start under `config`'s objective: from the seed's stage-1 checkpoint, before any update, each
    term's weighted gradient norm on the student's parameters and its cosine with ITC's gradient, averaged over
    the first `batches` batches of stage 2 (`rebalance_torch.objective.term_gradients`)."""
    import torch

    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch.checkpoint import load_checkpoint, load_weights
    from rebalance_torch.objective import build_objective, term_gradients
    from rebalance_torch.prepare import build_student
    from rebalance_torch.schedule import batch_rows

    seed_dir = Path(seed_dir)
    prepared = prepare(config, teachers=True, log=lambda _m: None,
                       tokenizer=Tokenizer.load(seed_dir / "tokenizer.json"), teacher_cache=seed_dir / "teachers")
    student = build_student(config, prepared.tokenizer)
    path = checkpoint_path(seed_dir, 1, "best")
    load_weights(student, load_checkpoint(path), path)
    feats = prepared.teachers
    objective = build_objective(student, config, feats.train_image.shape[1], feats.train_text.shape[1])
    student.train()
    sums: dict[str, list[float]] = {}
    for step in range(batches):
        rows = batch_rows(config.seed, 2, step, len(prepared.dataset), config.batch_size)
        batch = prepared.collate([prepared.dataset[int(r)] for r in rows])
        grads = term_gradients(student, objective, config, 2, batch.images, batch.ids, batch.mask, batch.image_idx,
                               torch.from_numpy(feats.train_image[rows]), torch.from_numpy(feats.train_text[rows]),
                               seed=step)
        for name, g in grads.items():
            cos = torch.nn.functional.cosine_similarity(g, grads["itc"], dim=0) if "itc" in grads else g.new_zeros(())
            sums.setdefault(name, [0.0, 0.0])
            sums[name][0] += float(g.norm()) / batches
            sums[name][1] += float(cos) / batches
    return {name: {"norm": norm, "cos_itc": cos} for name, (norm, cos) in sums.items()}


def gradients_line(per_seed: dict[int, dict[str, dict[str, float]]]) -> str:
    """One sentence: each term's weighted gradient norm and cosine with ITC, mean over seeds."""
    names = list(next(iter(per_seed.values())))
    parts = [f"{n.upper()} {statistics.fmean(g[n]['norm'] for g in per_seed.values()):.1f} (cos "
             f"{statistics.fmean(g[n]['cos_itc'] for g in per_seed.values()):+.2f})" for n in names]
    return ("Stage 2's start, the official objective (the stage-1 checkpoint before any update, the first 4 "
            "batches, mean over seeds): each term's weighted gradient norm on the student, and its cosine with "
            "ITC's gradient: " + ", ".join(parts) + ".")


def paired_table(results: dict[str, dict[int, dict]], keys=TABLE_KEYS, against: str = "baseline") -> dict:
    """`{"baseline": {key: (mean, std)}, "diff": {condition: {key: (mean, std)}}}` over seeds, where a condition's
    value per seed is its metric minus the `against` row's metric of the same seed ("baseline" holds that row's
    own mean ± std, whatever it is; every other row of `results` is a condition)."""
    def mean_std(values: list[float]) -> tuple[float, float]:
        return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    base = results[against]
    seeds = sorted(base)
    table = {"baseline": {k: mean_std([base[s][k] for s in seeds]) for k, _ in keys if k in base[seeds[0]]},
             "diff": {}}
    for cond, per_seed in results.items():
        if cond == against:
            continue
        table["diff"][cond] = {k: mean_std([per_seed[s][k] - base[s][k] for s in seeds])
                               for k, _ in keys if k in base[seeds[0]]}
    return table


def table_markdown(table: dict, keys=TABLE_KEYS, against: str = "baseline") -> str:
    """The paired table as markdown: the `against` row absolute, then each condition − `against`; with a
    "stage1" or "full" part (`run_ablation`), that row absolute and each row − it below."""
    cols = [(k, label) for k, label in keys if k in table["baseline"]]
    lines = ["| condition | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---:|" * len(cols)]

    def rows(part: dict, name: str) -> None:
        lines.append(f"| {name} (absolute) | " + " | ".join(f"{part['baseline'][k][0]:.2f} ± "
                                                           f"{part['baseline'][k][1]:.2f}" for k, _ in cols) + " |")
        for cond, row in part["diff"].items():
            lines.append(f"| {cond} − {name} | " + " | ".join(f"{row[k][0]:+.2f} ± {row[k][1]:.2f}"
                                                             for k, _ in cols) + " |")

    rows(table, against)
    for part, name in EXTRA_PARTS:
        if part in table:
            rows(table[part], name)
    return "\n".join(lines)


# The parts of a paired table besides the one against the baseline: (key in the table, the row it is taken against).
EXTRA_PARTS = (("stage1", STAGE1), ("full", "full"))


def _tables(results: dict[str, dict[int, dict]], keys) -> dict:
    """The paired table against the baseline and, when present, its parts against stage 1 (every stage-2 row) and
    against the official full objective (every other stage-2 row: what a remedy changes)."""
    stage2 = {k: v for k, v in results.items() if k != STAGE1}
    table = paired_table(stage2, keys)
    if results.get(STAGE1):
        table["stage1"] = paired_table(results, keys, against=STAGE1)
    if stage2.get("full"):
        table["full"] = paired_table(stage2, keys, against="full")
    return table


def run_ablation(preset: str, seeds: int = 3, jobs: int = 2, out: str | Path | None = None,
                 base: TrainConfig | None = None, conditions: dict[str, dict] | None = None,
                 log: Callable[[str], None] = print, keys=TABLE_KEYS, name: str = "ablate",
                 gradients: bool = False) -> dict:
    """Stage 1 per seed, then every condition per seed from it; returns (and writes) the paired tables over `keys`
    ((metric, label) pairs): `table` on the test split and `table_val` on the validation split, each against the
    baseline and (its "stage1" part) against stage 1. `name` names the job in the log and the files (`rebalance
    compare` is one). `gradients`: also measure each term's pull at the start of stage 2 (`start_gradients`)."""
    if seeds < 1 or jobs < 1:
        raise ValueError(f"seeds and jobs must be >= 1, got seeds={seeds}, jobs={jobs}")
    conditions = conditions or CONDITIONS
    if "baseline" not in conditions:
        raise ValueError("conditions must include 'baseline' (the paired differences are taken against it)")
    if STAGE1 in conditions:
        raise ValueError(f"{STAGE1!r} names the shared stage-1 row; call the condition something else")
    # every condition is a change of the official objective: a base's remedies (e.g. the demo's recipe) are reset
    base = (base or demo_config()).with_recipe("official").replace(preset=preset, threads=1)
    out = Path(out or f"runs/{name}-{preset}")
    out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    seed_dirs = {s: out / f"seed{s}" for s in range(seeds)}
    stage1_tasks = {s: None if _stage1_done(d) else (_stage1_task, base.replace(seed=s).to_dict(), str(d))
                    for s, d in seed_dirs.items()}
    condition_tasks = {s: [((name, s), (_condition_task, base.replace(seed=s, teacher_dir=str(d / "teachers"),
                                                                     **changes).to_dict(), str(d),
                                        str(d / _folder(name)), name))
                           for name, changes in conditions.items()] for s, d in seed_dirs.items()}
    log(f"{name} {preset}: {seeds} seeds × {len(conditions)} conditions, {jobs} process(es); stage 1 for "
        f"{sum(t is not None for t in stage1_tasks.values())} seed(s)")
    done = _pipeline(stage1_tasks, condition_tasks, jobs, log)
    for s, d in seed_dirs.items():   # a stage 1 finished earlier: its evaluations are on disk
        if (STAGE1, s) not in done:
            done[(STAGE1, s)] = {"test": json.loads((d / "eval.json").read_text()),
                                 "val": json.loads((d / VAL_FILE).read_text())}
    order = [STAGE1, *conditions]
    results: dict[str, dict[int, dict]] = {n: {} for n in order}
    results_val: dict[str, dict[int, dict]] = {n: {} for n in order}
    for (condition, s), result in sorted(done.items(), key=lambda item: (item[0][1], order.index(item[0][0]))):
        results[condition][s] = result["test"]
        results_val[condition][s] = result["val"]
    table, table_val = _tables(results, keys), _tables(results_val, keys)
    grads = {s: start_gradients(d, base.replace(seed=s, teacher_dir=str(d / "teachers")))
             for s, d in seed_dirs.items()} if gradients else {}
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
              "results_val": results_val, "table_val": table_val, "start_gradients": grads,
              "seconds": {"total": elapsed},
              "code": code_version()}
    write_json_atomic(out / "ablation.json", record, indent=2)
    md, md_val = table_markdown(table, keys), table_markdown(table_val, keys)
    write_text_atomic(out / "ablation.md", f"# {name.capitalize()}: {preset}, {seeds} seeds\n\n"
                                         f"## Test split\n\n{md}\n\n"
                                         f"## Validation split (the one to choose on)\n\n{md_val}\n\n"
                                         + (gradients_line(grads) + "\n\n" if grads else "") +
                                         f"Wall time {elapsed:.0f} s with {jobs} process(es).\n\n"
                                         f"![ablation](plots/ablation.png)\n"
                                         + ("![geometry](plots/geometry.png)\n"
                                            if (out / "plots" / "geometry.png").is_file() else ""))
    log("test split:\n" + md)
    log("validation split:\n" + md_val)
    if grads:
        log(gradients_line(grads))
    log(f"{name} {preset}: {elapsed:.0f} s")
    return record
