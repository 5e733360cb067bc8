"""A run folder's report: the figures and `report.md` written after training (`rebalance train`, the demo, the
ablation's runs), from what the trainer left in the folder.

What a reader needs beside the numbers is said here once: what each column measures and which way is better
(`COLUMN_LEGEND`), which numbers cannot be trusted and why (`cautions`), and the name of what was trained
(`stage_name`), used as the row label everywhere.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from rebalance import plots
from rebalance_ref.files import write_text_atomic
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import BASELINE_WEIGHTS, LOSS_NAMES, OFFICIAL_WEIGHTS, TrainConfig
from rebalance_torch.diagnostics import relation_matrices
from rebalance_torch.evaluate import HEADLINE, encode_split, markdown_table, probe_table
from rebalance_torch.models import Student, parameter_report
from rebalance_torch.prepare import Prepared
from rebalance_torch.runlog import read_metrics
from rebalance_torch.trainer import train

# What each reported metric measures and which direction is better, by metric key (the keys of
# `rebalance_torch.evaluate.evaluate_student`); tables label their columns as they like and look the meaning up here.
COLUMN_LEGEND = {
    "cos_r_mean": "cross-modal recall: mean of R@1, R@5, R@10 over image→caption and caption→image, ranked by "
                  "embedding cosine (what the exported retriever serves); %, higher is better",
    "itm_r_mean": "the same recall with each query's top `k_test` by cosine re-ranked by the ITM head (the "
                  "paper's protocol); %, higher is better",
    "rouge_i2i@10": "image→image NDCG@10, relevance = ROUGE-L between the scenes' captions (the paper's); ×100, "
                    "higher is better",
    "rouge_t2t@10": "caption→caption NDCG@10, ROUGE-L relevance; ×100, higher is better",
    "rouge_i2it@10": "image→(images and captions) NDCG@10, ROUGE-L relevance; ×100, higher is better",
    "rouge_t2it@10": "caption→(captions and images) NDCG@10, ROUGE-L relevance; ×100, higher is better",
    "attr_i2i@10": "image→image NDCG@10, relevance from the scenes' true attributes (shapes world only); ×100, "
                   "higher is better",
    "attr_t2t@10": "caption→caption NDCG@10, true-attribute relevance; ×100, higher is better",
    "attr_i2it@10": "image→(images and captions) NDCG@10, true-attribute relevance; ×100, higher is better",
    "attr_t2it@10": "caption→(captions and images) NDCG@10, true-attribute relevance; ×100, higher is better",
    "modality_gap": "modality gap ‖mean v − mean t‖ between the centroids of the unit image and caption "
                    "embeddings (0 to 2): a diagnostic, not a score — lower means images and captions share one "
                    "region, which mixed retrieval (I2IT, T2IT) needs; a large gap with good recall is possible",
    "alignment": "mean squared distance of matching image–caption pairs (0 to 4); lower is better aligned",
    "uniformity_image": "log mean exp(−2‖vᵢ − vⱼ‖²) over images; lower = more spread out (a diagnostic)",
    "uniformity_text": "the same over captions; lower = more spread out (a diagnostic)",
}
# ITM is a 2-way classification of one matching pair and two mismatched ones per caption: a head that has learned
# nothing predicts the label prior 1/3 and its loss is the entropy H(1/3) = −(1/3) ln(1/3) − (2/3) ln(2/3).
ITM_PRIOR_LOSS = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)   # 0.6365 nats
ITM_PRIOR_TOLERANCE = 0.05
RECALL_KS = (1, 5, 10)
# Stage 1 is converged when its validation R-mean (cosine) moves by less than CONVERGED_RANGE points over the checks
# of its last CONVERGED_TAIL of steps, counted from the last check at or before that tail starts.
CONVERGED_RANGE = 0.5
CONVERGED_TAIL = 0.2


def code_version(where: str | Path | None = None) -> dict:
    """The commit of the checkout holding this package (`git rev-parse HEAD`) and whether tracked files differ
    from it; `{"commit": None, "dirty": None}` outside a git checkout or without git."""
    where = Path(where) if where is not None else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status)}


def format_weights(weights: dict[str, float]) -> str:
    """Loss weights as a sum, in `LOSS_NAMES` order: {"itc": 1, "itm": 2} -> "ITC + 2·ITM"."""
    parts = [(f"{w:g}·" if w != 1 else "") + k.upper() for k in LOSS_NAMES if (w := weights.get(k, 0.0))]
    return " + ".join(parts) or "no loss"


def stage_name(config: TrainConfig, stage: int) -> str:
    """What a stage trained, as a row label: "stage 1 (ITC + 2·ITM)", "stage 2 baseline (ITC + ITM)", "stage 2
    full objective", "stage 2 full objective, KD on [v,t]", or "stage 2 (ITC + 2·ITM + IIC + 2·TTC)"."""
    if stage == 1:
        return f"stage 1 ({format_weights(config.stage1_weights)})"
    relation = ", KD on [v,t]" if config.student_relation == "projected" else ""
    if config.weights == OFFICIAL_WEIGHTS:
        return "stage 2 full objective" + relation
    if config.weights == BASELINE_WEIGHTS:
        return f"stage 2 baseline ({format_weights(config.weights)})"
    uses_kd = any(config.weights.get(k) for k in ("kd", "kdi", "kdt"))
    return f"stage 2 ({format_weights(config.weights)}){relation if uses_kd else ''}"


def column_legend(columns=HEADLINE) -> str:
    """A markdown list: each column's label and what it measures (`COLUMN_LEGEND`)."""
    return "\n".join(f"- **{label}**: {COLUMN_LEGEND[key]}." for key, label in columns if key in COLUMN_LEGEND)


def last_itm_loss(rows: list[dict], stage: int) -> float | None:
    """The ITM term of the last logged step of `stage` in `metrics.jsonl` rows (None when not logged)."""
    logged = [r for r in rows if r.get("stage") == stage and "itm" in r]
    return logged[-1]["itm"] if logged else None


def convergence(rows: list[dict], stage: int, total_steps: int) -> dict | None:
    """How much the validation R-mean (cosine) still moved at the end of `stage` (`metrics.jsonl` rows): over the
    checks from the last one at or before step (1 − CONVERGED_TAIL) · `total_steps` to the end, its range
    (max − min) and its rise (last − first); converged when the range is below CONVERGED_RANGE. None with fewer than
    two checks."""
    checks = [(r["step"], r["val"]["cos_r_mean"]) for r in rows if r.get("stage") == stage and "val" in r]
    if len(checks) < 2:
        return None
    start = max((step for step, _ in checks if step <= (1 - CONVERGED_TAIL) * total_steps), default=checks[0][0])
    tail = [value for step, value in checks if step >= start]
    spread = max(tail) - min(tail)
    return {"from_step": start, "to_step": checks[-1][0], "range": spread, "rise": tail[-1] - tail[0],
            "converged": spread < CONVERGED_RANGE}


def convergence_caution(name: str, record: dict | None) -> list[str]:
    """One sentence when `record` (`convergence`) says the stage had not converged; none otherwise."""
    if record is None or record["converged"]:
        return []
    return [f"{name}: not converged — its validation R-mean moved {record['range']:.2f} points (more than "
            f"{CONVERGED_RANGE}) over steps {record['from_step']}–{record['to_step']} ({record['rise']:+.2f} from "
            f"first to last), so more steps would still change it."]


def cautions(name: str, results: dict, k_test: int, itm_loss: float | None = None) -> list[str]:
    """Why some of a row's numbers cannot be trusted: the ITM head still at its label prior (its re-ranking is then
    near noise), or `k_test` below a recall K (ITM re-ranking cannot reach that far, so R@K by ITM is R@K by
    cosine). One sentence each, naming the row and the column."""
    notes = []
    if "itm_r_mean" not in results:
        return notes
    if itm_loss is not None and abs(itm_loss - ITM_PRIOR_LOSS) <= ITM_PRIOR_TOLERANCE * ITM_PRIOR_LOSS:
        notes.append(f"{name}: R-mean (ITM) is untrusted — the ITM loss ended at {itm_loss:.3f}, within "
                     f"{100 * ITM_PRIOR_TOLERANCE:.0f} % of its label prior H(1/3) = {ITM_PRIOR_LOSS:.3f}: the "
                     f"ITM head scores barely better than a constant, so its re-ranking is close to noise.")
    short = [k for k in RECALL_KS if k_test < k]
    if short:
        notes.append(f"{name}: R-mean (ITM) mixes in cosine ranks — k_test = {k_test} is below R@"
                     f"{', R@'.join(map(str, short))}, and the ITM re-ranking only reorders each query's top "
                     f"{k_test}, so ITM R@{short[-1]} is cosine R@{short[-1]}.")
    return notes


def cautions_markdown(notes: list[str]) -> list[str]:
    return ["**Cautions**", ""] + [f"- ⚠ {n}" for n in notes] + [""] if notes else []


def train_and_report(config: TrainConfig, run_dir: str | Path, **options) -> dict:
    """`rebalance_torch.trainer.train`, then (when the test split was evaluated) the figures and `report.md`."""
    summary = train(config, run_dir, **options)
    if "test" in summary:
        student, _, _ = ckpt.load_student(run_dir, "best", map_location=config.device)
        stages = tuple(summary["stages"]) or (1,)
        write_run_outputs(Path(run_dir), config, summary.prepared, student, summary["test"],
                          stage=max(stages), init=options.get("init"),
                          best_step=summary["stages"][max(stages)]["best"]["step"])
    return summary


def _student_at(path: Path, device: str) -> Student:
    """The student of a checkpoint file (eval mode)."""
    state = ckpt.require_fields(ckpt.load_checkpoint(path, map_location=device), path, "model_config", "student")
    student = ckpt.build_student(state["model_config"])
    ckpt.load_weights(student, state, path, "its model config")
    return student.to(device).eval()


def stage1_student(run_dir: Path, init: str | Path | None, device: str) -> Student | None:
    """The stage-1 student a stage 2 started from (`init`, else the run's own stage1-best.pt); None if absent."""
    path = Path(init) if init is not None else ckpt.checkpoint_path(run_dir, 1, "best")
    return _student_at(path, device) if path.is_file() else None


def split_embeddings(student: Student, prepared: Prepared, device: str):
    """(v, t) of the test split: every image and every caption, projected (what retrieval ranks)."""
    emb = encode_split(student, prepared.splits["test"], prepared.tokenizer, device=device, keep_tokens=False)
    return emb.v, emb.t


# The figures of a run folder, in report order, with the sentence that says what each one shows.
FIGURES = (
    ("traces.png", "Training: each loss term, the weighted loss, validation R-mean (model selection), τ, τ2 and λ "
                   "over the steps of both stages."),
    ("relations.png", "Relation matrices on training items sorted by a scene attribute, one colour scale for "
                      "S_I, S_T, E and S_F; the last column is |S_F − E|, the gap structure distillation "
                      "closes, with the KD value in its title."),
    ("modality_gap.png", "Image and caption embeddings of the test split in one 2-D projection; the arrow is the "
                         "gap vector mean(t) → mean(v)."),
)


def write_run_outputs(run_dir: Path, config: TrainConfig, prepared: Prepared | None, student: Student,
                      results: dict, stage: int = 2, init: str | Path | None = None,
                      best_step: int | None = None) -> None:
    """Figures (`plots/traces.png`; with the data at hand `plots/relations.png` and `plots/modality_gap.png` at the
    start and the end of stage 2) and `report.md` for the run's last trained `stage`; `init` is the stage-1
    checkpoint a stage 2 started from (default: the run's own), `best_step` the step of the reported checkpoint."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    plot_dir = run_dir / "plots"
    plots.plot_traces(rows, plot_dir / "traces.png", stage1_steps=config.stage1_steps,
                      weights=config.weights if stage == 2 else None, itm_prior=ITM_PRIOR_LOSS)
    name = stage_name(config, stage)
    if prepared is not None:
        start = stage1_student(run_dir, init, config.device) if stage == 2 else None
        learned = [r for r in rows if r.get("stage") == 2 and "lam" in r
                   and (best_step is None or r["step"] <= best_step)]
        lam = learned[-1]["lam"] if learned else config.lam_init
        tau2 = learned[-1]["tau2"] if learned else config.tau2_init
        phases = {}
        if start is not None:
            phases["start of stage 2 (stage-1 student)"] = relation_matrices(start, prepared, config,
                                                                            config.lam_init, config.tau2_init)
        end = "end of stage 2 (best checkpoint)" if stage == 2 else "end of stage 1 (before any distillation)"
        phases[end] = relation_matrices(student, prepared, config, lam, tau2)
        if any(r is not None for r in phases.values()):
            plots.plot_relations(phases, plot_dir / "relations.png")
        gap_panels = {}
        if start is not None:
            gap_panels["stage 1 (start of stage 2)"] = split_embeddings(start, prepared, config.device)
        gap_panels[name] = split_embeddings(student, prepared, config.device)
        plots.plot_modality_gap(gap_panels, plot_dir / "modality_gap.png")
    notes = cautions(name, results, config.k_test, last_itm_loss(rows, stage))
    notes += convergence_caution(stage_name(config, 1), convergence(rows, 1, config.stage1_steps))
    check_file = run_dir / "teacher_check.json"
    check = json.loads(check_file.read_text()) if check_file.is_file() else {}
    lines = [f"# Run `{run_dir.name}`: {name}", "", "## Test split (best validation checkpoint)", "",
             markdown_table({name: results}), "", column_legend(), ""] + cautions_markdown(notes)
    if any(k.startswith("probe_") for k in results):
        lines += ["Search probe (test split, precision@5 of templated text queries against the true attributes; "
                  "`rebalance_ref.probe`):", "", probe_table({name: results}), ""]
    lines += ["## Teacher check (validation, NDCG@10)", ""]
    if check:
        lines += ["Before stage 2, each teacher against the stage-1 student on single-modal retrieval: a teacher "
                  "can only help where it is stronger.", "",
                  "| relevance / task | teacher | stage-1 student | teacher stronger |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {r['teacher']:.2f} | {r['student']:.2f} | {'yes' if r['teacher_stronger'] else 'NO'} |"
                  for k, r in check.items()]
    else:
        lines.append("No teacher check (this run trains no stage 2 with teachers).")
    figures = [(f, caption) for f, caption in FIGURES if (plot_dir / f).is_file()]
    if figures:
        lines += ["", "## Figures", ""]
        for f, caption in figures:
            lines += [f"{caption}", "", f"![{Path(f).stem}](plots/{f})", ""]
    counts = parameter_report(student)
    lines += ["", "## Student", "", "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), ""]
    lines += ["## Config", "", "```json", config.to_json(), "```", ""]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")
