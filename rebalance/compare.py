"""`rebalance compare`: the paper's answer to modal imbalance beside the field's other answers, on one bench.

Per seed: one data set, one pair of teachers and one converged stage 1 (ITC + 2·ITM); then, from that same stage-1
checkpoint and for the same steps, the compute-matched baseline (ITC + 2·ITM), the paper's recipe (the official
weights), and each other method as a stage-2 objective: GCL in place of ITC (docs/gcl.md), m²-Mix's mixed hard
negatives added to the baseline (docs/mixup.md), and ALBEF's momentum distillation as an option of ITC
(docs/momentum.md). Every method's difference to the baseline is paired (same data, teachers, init, batches) and
reported as mean ± std over seeds, with the geometry that each method claims to change: the modality gap, the
alignment and the uniformity (Mind the Gap's diagnostics, docs/gap.md), and the universal retrieval cells.

LIMoE is not in the table: it changes the student's architecture (docs/experts.md), so it cannot start from the
dense stage-1 checkpoint the others share; its comparison needs its own stage 1 (`rebalance train` with
`model_overrides={"moe": ...}`), which makes it unpaired.

It is the ablation machinery (`rebalance.ablate.run_ablation`) with other conditions and columns; the folder
layout is the same (`seed{S}/{method}/`, `ablation.json`, `ablation.md`, `plots/ablation.png`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rebalance.ablate import run_ablation
from rebalance_torch.config import BASELINE_WEIGHTS, OFFICIAL_WEIGHTS, TrainConfig

METHODS: dict[str, dict] = {
    "baseline": {"weights": dict(BASELINE_WEIGHTS)},
    "paper (official weights)": {"weights": dict(OFFICIAL_WEIGHTS)},
    "GCL": {"weights": {"gcl": 1.0, "itm": 2.0}},
    "m²-Mix": {"weights": {**BASELINE_WEIGHTS, "m2mix": 0.02}},
    "ALBEF momentum distillation": {"weights": dict(BASELINE_WEIGHTS), "itc_momentum": 0.995},
}
# Quality first (higher is better), then the geometry diagnostics (read each as its doc page says).
COMPARE_KEYS = (("cos_r_mean", "R-mean cos"), ("uni_r_mean", "universal R-mean"), ("attr_i2i@10", "I2I attr"),
                ("attr_t2t@10", "T2T attr"), ("attr_i2it@10", "I2IT attr"), ("attr_t2it@10", "T2IT attr"),
                ("probe_p5_colour_shape", "probe P@5 colour+shape"), ("modality_gap", "gap"),
                ("alignment", "alignment"), ("uniformity_joint", "uniformity (joint)"))


def run_comparison(preset: str, seeds: int = 3, jobs: int = 2, out: str | Path | None = None,
                   base: TrainConfig | None = None, methods: dict[str, dict] | None = None,
                   log: Callable[[str], None] = print) -> dict:
    """Stage 1 per seed, then every method from it; returns (and writes) the paired table (see the module)."""
    return run_ablation(preset, seeds=seeds, jobs=jobs, out=out, base=base, conditions=methods or METHODS,
                        log=log, keys=COMPARE_KEYS, name="compare")
