"""A run folder's report: the plots and `report.md` written after training (`rebalance train`, the demo, the
ablation's runs), from what the trainer left in the folder."""

from __future__ import annotations

import json
from pathlib import Path

from rebalance import plots
from rebalance_ref.files import write_text_atomic
from rebalance_torch import checkpoint as ckpt
from rebalance_torch.config import TrainConfig
from rebalance_torch.diagnostics import relation_matrices
from rebalance_torch.evaluate import markdown_table
from rebalance_torch.models import Student, parameter_report
from rebalance_torch.prepare import Prepared
from rebalance_torch.runlog import read_metrics
from rebalance_torch.trainer import train


def train_and_report(config: TrainConfig, run_dir: str | Path, **options) -> dict:
    """`rebalance_torch.trainer.train`, then (when the test split was evaluated) the plots and `report.md`."""
    summary = train(config, run_dir, **options)
    if "test" in summary:
        student, _, _ = ckpt.load_student(run_dir, "best", map_location=config.device)
        write_run_outputs(Path(run_dir), config, summary.prepared, student, summary["test"])
    return summary


def write_run_outputs(run_dir: Path, config: TrainConfig, prepared: Prepared | None, student: Student,
                      results: dict) -> None:
    """Plots (`plots/traces.png`, `plots/relations.png` when teachers are known) and `report.md`."""
    rows = read_metrics(run_dir)
    written = plots.plot_traces(rows, run_dir / "plots" / "traces.png")
    learned = [r for r in rows if "lam" in r]
    relations = {} if prepared is None else relation_matrices(
        student, prepared, config, lam=learned[-1]["lam"] if learned else config.lam_init,
        tau2=learned[-1]["tau2"] if learned else config.tau2_init)
    if relations:
        plots.plot_relations(relations, run_dir / "plots" / "relations.png")
    check_file = run_dir / "teacher_check.json"
    check = json.loads(check_file.read_text()) if check_file.is_file() else {}
    lines = [f"# Run `{run_dir.name}`", "", "## Test split (best validation checkpoint)", "",
             markdown_table({run_dir.name: results}), "", "## Teacher check (validation, NDCG@10)", ""]
    if check:
        lines += ["| relevance / task | teacher | stage-1 student | teacher stronger |", "|---|---:|---:|---|"]
        lines += [f"| {k} | {r['teacher']:.2f} | {r['student']:.2f} | {'yes' if r['teacher_stronger'] else 'NO'} |"
                  for k, r in check.items()]
    else:
        lines.append("No teacher check (no stage 2 with teachers in this run, or no validation teacher features).")
    counts = parameter_report(student)
    lines += ["", "## Student", "", "Parameters: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), ""]
    lines += ["## Config", "", "```json", config.to_json(), "```", ""]
    if written:
        lines += ["## Plots", ""] + [f"![{p.stem}](plots/{p.name})" for p in sorted((run_dir / "plots").glob("*.png"))]
    write_text_atomic(run_dir / "report.md", "\n".join(lines) + "\n")
