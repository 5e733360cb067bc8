"""The two-stage trainer: stage 1, then stage 2 from stage 1's validation-best checkpoint.

Stage 1 trains the student from scratch with `stage1_weights` (ITC + 2·ITM). Stage 2 starts from stage 1's
validation-best checkpoint and trains with `weights` (the full objective by default; ITC + ITM alone is the
compute-matched baseline; any ablation is a choice of weights). New in stage 2, as in the official code: the
trainable teacher projections `W_sv`, `W_st`, the blend weight λ (init 0.5), the relation temperature τ2 (init
0.07), with `teacher_tau="own"` the teacher terms' own τ' (init: stage 1's τ), and for `distance="wasserstein"`
the official teacher MLPs (`rebalance_torch.objective`). τ carries over from stage 1. The remedies
`teacher_warmup` / `teacher_ramp` set, per step, whether the teacher terms reach the student and at what weight
(`rebalance_torch.schedule.teacher_phase`).

Every step reseeds torch's RNG from (seed, stage, step) and each epoch's batch order is a seeded permutation
(`rebalance_torch.schedule`), so a run resumed from a checkpoint replays exactly what an uninterrupted run would
have done. The step itself is `rebalance_torch.step.train_step`; only the steps that log (every `LOG_EVERY`th),
validate or checkpoint read numbers back from the device.

Run folder: `config.json`, `tokenizer.json`, `metrics.jsonl` (one JSON line per logged step — every loss term,
λ, τ, τ2, lr — and per validation), `checkpoints/stage{1,2}-{last,best}.pt`, `teacher_check.json`, `eval.json`
(the test split, best checkpoint), `log.txt`. The application (`rebalance train`, the demo) adds plots and
`report.md`. See docs/training.md.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rebalance_ref.files import write_json_atomic
from rebalance_ref.threads import set_threads
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch import checkpoint as ckpt
from rebalance_torch import evaluate as ev
from rebalance_torch import input_checks
from rebalance_torch.config import RUNTIME_FIELDS, TrainConfig
from rebalance_torch.diagnostics import teacher_check
from rebalance_torch.distributed import DistContext
from rebalance_torch.models import Student
from rebalance_torch.objective import as_numbers, build_objective, compute_losses
from rebalance_torch.prepare import Prepared, build_student, prepare
from rebalance_torch.pretrain import pretrain_image_tower
from rebalance_torch.runlog import Progress, RunLog, SilentLog
from rebalance_torch.schedule import batch_rows, lr_at, step_seed, teacher_phase
from rebalance_torch.step import make_optimizer, train_step

# Fields an `init` checkpoint must share with the run it starts: they fix the data, vocabulary and model.
MODEL_FIELDS = ("preset", "data_dir", "n_train", "n_val", "n_test", "image_size", "max_len", "model",
                "model_overrides", "seed")
LOG_EVERY = 10
PRETRAIN_FILE = "pretrain.json"   # the image tower's pre-training record, in the run folder


class RunSummary(dict):
    """What `train` returns: a JSON-ready dict (run folder, stages, timings, test metrics), with the `Prepared` data
    the run used as the attribute `prepared` (for reports that need the teachers or the training rows)."""

    prepared: Prepared | None = None


class _Stage:
    """One stage's moving parts: the student, the stage-2 objective (None in stage 1), the optimiser, the step
    function (through DDP with several processes) and the teacher features of every training row."""

    def __init__(self, stage: int, config: TrainConfig, prepared: Prepared, student: Student,
                 dist_ctx: DistContext | None):
        self.stage, self.config, self.student = stage, config, student
        self.device = torch.device(config.device)
        self.total = config.stage1_steps if stage == 1 else config.stage2_steps
        feats = prepared.teachers if stage == 2 else None
        self.objective = None
        if stage == 2:
            dims = (feats.train_image.shape[1], feats.train_text.shape[1]) if feats is not None else (1, 1)
            self.objective = build_objective(student, config, *dims).to(self.device)
        student.to(self.device)
        self.optimizer = make_optimizer([student] + ([self.objective] if self.objective is not None else []),
                                        config)
        ctx = dist_ctx or DistContext()
        self.step_losses = ctx.data_parallel([student, self.objective], functools.partial(
            compute_losses, student, self.objective, config, stage, dist_ctx=dist_ctx))
        self.image_feats = torch.from_numpy(feats.train_image) if feats is not None else None
        self.text_feats = torch.from_numpy(feats.train_text) if feats is not None else None

    def resume(self, state: dict) -> tuple[int, dict]:
        """Restore the objective, optimiser and RNG of a `last` checkpoint; returns (step, best record)."""
        if self.objective is not None:
            self.objective.load_state_dict(state["objective"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["torch"])
        return int(state["step"]), dict(state["best"])

    def step(self, step: int, prepared: Prepared, ctx: DistContext) -> dict[str, torch.Tensor]:
        """Train step `step` on this process's rows of its global batch; returns the detached terms."""
        config = self.config
        torch.manual_seed(step_seed(config.seed, self.stage, step, *ctx.seed_parts))
        rows = ctx.shard(batch_rows(config.seed, self.stage, step, len(prepared.dataset), config.batch_size))
        batch = prepared.collate([prepared.dataset[int(r)] for r in rows])
        batch = type(batch)(*(x.to(self.device) for x in batch))
        a = self.image_feats[rows].to(self.device) if self.image_feats is not None else None
        b = self.text_feats[rows].to(self.device) if self.text_feats is not None else None
        itm_generator = None
        if config.itm_negatives == "global":  # one stream shared by every process (and any world size)
            itm_generator = torch.Generator(device=self.device).manual_seed(step_seed(config.seed, self.stage,
                                                                                       step, 3))
        lr = lr_at(step, self.total, config.warmup, config.lr)
        phase = (teacher_phase(step, self.total, config.teacher_warmup, config.teacher_ramp) if self.stage == 2
                 else (False, 1.0))
        return train_step(self.step_losses, self.optimizer, self.student, config, batch, lr, a, b, itm_generator,
                          objective=self.objective, teacher_phase=phase)

    def checkpoint(self, run_dir: Path, done: int, best: dict, val: dict, kinds: tuple[str, ...]) -> None:
        state = ckpt.training_state(self.config, self.student, self.objective, self.optimizer, self.stage, done,
                                    best, val)
        for kind in kinds:
            ckpt.save_checkpoint(state, ckpt.checkpoint_path(run_dir, self.stage, kind))


def train_stage(stage: int, config: TrainConfig, prepared: Prepared, run_dir: Path, runlog: RunLog,
                student: Student, resume_state: dict | None = None, progress: bool = True,
                stop_after: int | None = None, dist_ctx: DistContext | None = None, label: str | None = None) -> dict:
    """Train one stage in `run_dir`; returns the stage's best validation record. `resume_state` continues a
    checkpointed stage; `stop_after` stops after that many steps of this stage (for tests and time budgets).
    `label` names the phase in the progress bar and the log ("stage 2 — full"; default "stage N").
    `dist_ctx`: several processes (each trains on its shard of every global batch; process 0 validates and
    writes the checkpoints); None = one process. The first step checks the losses' inputs; the others trust
    them (`rebalance_torch.input_checks`)."""
    ctx = dist_ctx or DistContext()
    label = label or f"stage {stage}"
    run = _Stage(stage, config, prepared, student, dist_ctx)
    best, start = {"score": -math.inf, "step": -1}, 0
    if resume_state is not None:
        start, best = run.resume(resume_state)
        runlog.echo(f"{label}: resumed at step {start}/{run.total}")
    end = run.total if stop_after is None else min(run.total, start + stop_after)
    bar = Progress(end - start, label, progress)
    student.train()
    val: dict = {}
    tic = time.perf_counter()
    for step in range(start, end):
        with input_checks.skipped(step > start):
            terms = run.step(step, prepared, ctx)
        bar.update()
        done = step + 1
        log_now = done % LOG_EVERY == 0 or done == run.total or done == end
        eval_now = done % config.eval_every == 0 or done == run.total   # the same on every process
        if log_now or eval_now:
            logged = as_numbers(terms, dist_ctx)  # the only read from the device: on these steps alone
            if not math.isfinite(logged["loss"]):  # checked before any checkpoint is written
                raise FloatingPointError(f"stage {stage} step {done}: the loss is {logged['loss']} ({logged}); "
                                         f"lower the learning rate or clamp τ (tau_clamp)")
            if log_now:
                bar.show(loss=logged["loss"], **({"τ": logged["tau"]} if "tau" in logged else {}))
                runlog.write({"stage": stage, "step": done, "lr": lr_at(step, run.total, config.warmup, config.lr),
                              **logged})
        if eval_now and ctx.is_main:
            val = ev.cosine_recall(ev.encode_split(student, prepared.splits["val"], prepared.tokenizer,
                                                   device=config.device, keep_tokens=False))
            score = val["cos_r_mean"] if config.select_on == "r_mean" else float(done)
            runlog.write({"stage": stage, "step": done, "val": val})
            improved = score > best["score"]
            if improved:
                best = {"score": score, "step": done}
            run.checkpoint(run_dir, done, best, val, ("best", "last") if improved else ("last",))
    bar.close()
    ctx.barrier()  # the checkpoints process 0 wrote are on disk before any process reads them
    elapsed = time.perf_counter() - tic
    if end > start:
        runlog.echo(f"{label}: steps {start}->{end} of {run.total} in {elapsed:.1f} s "
                    f"({1000 * elapsed / (end - start):.1f} ms/step); best val R-mean {best['score']:.2f} "
                    f"at step {best['step']}")
    return {"best": best, "seconds": elapsed, "finished": end == run.total}


def _load_into(student: Student, path: Path, config: TrainConfig, fields=None) -> dict:
    """Load a checkpoint's weights into `student`; its config must equal `config` (or agree on `fields`)."""
    state = ckpt.require_fields(ckpt.load_checkpoint(path), path, "config", "student")
    if fields is None:
        ckpt.check_same_config(state, config, path)
    else:
        saved = TrainConfig.from_dict(state["config"])
        diff = {k: v for k, v in saved.differences(config).items() if k in fields}
        if diff:
            lines = "; ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"checkpoint {path} cannot start this run: its data/model differ ({lines})")
    ckpt.load_weights(student, state, path)
    return state


def _start_folder(config: TrainConfig, run_dir: Path, stages: tuple[int, ...], resume: bool,
                  ctx: DistContext) -> None:
    """Refuse to overwrite a run's checkpoints without `resume`, and a resume under another config; then write
    `config.json` (process 0)."""
    if not resume and (run_dir / ckpt.CHECKPOINT_DIR).is_dir() and any(
            ckpt.checkpoint_path(run_dir, s, "last").is_file() for s in stages):
        raise ValueError(f"run folder {run_dir} already holds checkpoints of these stages; use resume=True "
                         f"(--resume) to continue it, or another folder")
    config_file = run_dir / "config.json"
    if resume and config_file.is_file():
        diff = TrainConfig.load(config_file).differences(config, ignore=RUNTIME_FIELDS)
        if diff:
            lines = "; ".join(f"{k}: run {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"--resume: {config_file} differs from this config ({lines})")
    ctx.barrier()  # every process has read the folder before process 0 writes to it
    if ctx.is_main:
        config.save(config_file)


def _run_tokenizer(run_dir: Path, init: str | Path | None, resume: bool) -> Tokenizer | None:
    """The tokenizer a run must keep: its `init` checkpoint's run's, or its own when resuming; else None (new)."""
    if init is not None and (Path(init).parent.parent / "tokenizer.json").is_file():
        return Tokenizer.load(Path(init).parent.parent / "tokenizer.json")
    if resume and (run_dir / "tokenizer.json").is_file():
        return Tokenizer.load(run_dir / "tokenizer.json")
    return None


def _begin_stage(stage: int, config: TrainConfig, prepared: Prepared, run_dir: Path, runlog: RunLog,
                 student: Student, init: str | Path | None, resume: bool, ctx: DistContext,
                 label: str | None = None) -> dict | None:
    """Load what stage `stage` starts from: its own `last` checkpoint when resuming (returned), else for stage 2
    the stage-1 checkpoint (and run the teacher check). Returns {"done": True, ...} for a finished stage."""
    last = ckpt.checkpoint_path(run_dir, stage, "last")
    if resume and last.is_file():
        state = ckpt.require_fields(_load_into(student, last, config), last, "step", "best", "optimizer", "rng")
        if int(state["step"]) >= (config.stage1_steps if stage == 1 else config.stage2_steps):
            runlog.echo(f"stage {stage}: already complete")
            return {"done": True, "best": state["best"]}
        runlog.truncate(stage, int(state["step"]))
        return state
    if stage == 1:
        runlog.truncate(0, 0)
        return None
    source = Path(init) if init is not None else ckpt.checkpoint_path(run_dir, 1, "best")
    if not source.is_file():
        raise ValueError(f"stage 2 needs a stage-1 checkpoint: {source} does not exist (train stage 1 first, or "
                         f"pass init=)")
    _load_into(student, source, config, fields=MODEL_FIELDS)
    runlog.truncate(1, 10 ** 12)
    runlog.echo(f"{label or 'stage 2'}: starting from {source}")
    # Only a stage 2 that uses the teachers checks them (a baseline from the same checkpoint would repeat it).
    check = teacher_check(student, prepared, config.device) if ctx.is_main and config.uses_teachers() else {}
    if check:
        write_json_atomic(run_dir / "teacher_check.json", check, indent=2)
        for key, r in check.items():
            runlog.echo(f"teacher check ({key}, val): teacher {r['teacher']:.2f} vs stage-1 student "
                        f"{r['student']:.2f} -> teacher {'stronger' if r['teacher_stronger'] else 'WEAKER'}")
    return None


def _phase(label: str | None, stage: int, stages: tuple[int, ...]) -> str | None:
    """The name a stage trains under: `label` alone when the call trains one stage, else "LABEL, stage N"."""
    if label is None:
        return None
    return label if len(stages) == 1 else f"{label}, stage {stage}"


def train(config: TrainConfig, run_dir: str | Path, *, prepared: Prepared | None = None, init: str | Path | None
          = None, stages: tuple[int, ...] = (1, 2), resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print, stop_after: int | None = None, evaluate_test: bool = True,
          dist_ctx: DistContext | None = None, label: str | None = None) -> RunSummary:
    """Train a run into `run_dir` and return its summary.

    `stages`: which stages to run (a stage with 0 steps is skipped). Stage 2 starts from `init` (a stage-1
    checkpoint, e.g. of a sibling run: the demo's baseline and the ablation's conditions) or else this run's own
    `stage1-best.pt`. `resume=True` continues from the `last` checkpoints present; the config must match the
    checkpoint's (device and threads aside). After training, the best checkpoint is evaluated on the test split
    (`eval.json`, and `summary["test"]`). Uses `config.threads` threads.

    `dist_ctx` (from `rebalance_torch.distributed.from_environment`, under torchrun): train on several processes;
    each takes its shard of every global batch of `config.batch_size` rows; process 0 alone writes the run
    folder, logs, validates and evaluates (the others return a summary without "test"). Resuming works on any
    number of processes: the data order depends on the global batch and the step only.

    `label`: the phase's name in the progress bar and the log, e.g. "stage 2 — baseline" (with several stages:
    "LABEL, stage N"); default "stage N". `progress`: a bar when someone watches (a terminal or a notebook).
    """
    set_threads(config.threads)
    ctx = dist_ctx or DistContext()
    ctx.check_batch(config.batch_size)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    runlog = RunLog(run_dir, log) if ctx.is_main else SilentLog(run_dir, log)
    torch.manual_seed(config.seed)
    stages = tuple(s for s in stages if (config.stage1_steps if s == 1 else config.stage2_steps) > 0)
    if not stages:
        raise ValueError("stages: nothing to train (the selected stages have 0 steps)")
    _start_folder(config, run_dir, stages, resume, ctx)
    if prepared is None:
        # process 0 first: it trains the teachers (if needed) and caches them; the others then read the cache
        for turn in (True, False):
            if ctx.is_main == turn:
                prepared = prepare(config, teachers=config.uses_teachers() and 2 in stages, stage1=1 in stages,
                                   log=runlog.echo,
                                   tokenizer=_run_tokenizer(run_dir, init, resume),
                                   teacher_cache=run_dir / "teachers")
            ctx.barrier()
    if ctx.is_main:
        prepared.tokenizer.save(run_dir / "tokenizer.json")
    if 2 in stages and config.uses_teachers() and prepared.teachers is None:
        raise ValueError("stage 2 weights use teacher terms but no teacher features were prepared")
    student = build_student(config, prepared.tokenizer)
    summary = RunSummary(run_dir=str(run_dir), stages={}, timings=dict(prepared.timings))
    summary.prepared = prepared
    for stage in stages:
        phase = _phase(label, stage, stages)
        state = _begin_stage(stage, config, prepared, run_dir, runlog, student, init, resume, ctx, phase)
        if state is not None and state.get("done"):
            summary["stages"][stage] = {"best": state["best"], "seconds": 0.0, "finished": True}
            continue
        if stage == 1 and state is None:   # a fresh stage 1: the image tower's pre-training comes first
            record = pretrain_image_tower(student, prepared.splits["train"], config, log=runlog.echo)
            if record:
                summary["timings"]["pretrain"] = record["seconds"]
                if ctx.is_main:
                    write_json_atomic(run_dir / PRETRAIN_FILE, record, indent=2)
        tic = time.perf_counter()
        result = train_stage(stage, config, prepared, run_dir, runlog, student, state, progress and ctx.is_main,
                             stop_after, dist_ctx=dist_ctx, label=phase)
        summary["timings"][f"stage{stage}"] = time.perf_counter() - tic
        summary["stages"][stage] = result
        if not result["finished"]:
            return summary
    if evaluate_test and ctx.is_main:
        tic = time.perf_counter()
        summary["test"] = _evaluate_best(config, prepared, run_dir)
        summary["timings"]["eval"] = time.perf_counter() - tic
    return summary


def _evaluate_best(config: TrainConfig, prepared: Prepared, run_dir: Path) -> dict:
    """The run's best checkpoint on the test split, also written to `eval.json`."""
    best_student, _, _ = ckpt.load_student(run_dir, "best", map_location=config.device)
    results = ev.evaluate_student(best_student, prepared.splits["test"], prepared.tokenizer,
                                  relevance=prepared.relevance("test"), k_test=config.k_test, device=config.device)
    write_json_atomic(run_dir / "eval.json", results, indent=2)
    return results
