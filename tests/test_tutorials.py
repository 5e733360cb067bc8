"""Every tutorial runs as written, in fast mode, in a fresh process, and writes the figures it promises.

Each script runs with `REBALANCE_FAST=1`, one thread, its figures redirected to a temporary folder
(`REBALANCE_TUTORIAL_OUT`) and the temporary folder as working directory (a tutorial must not depend on where it
is started). The tutorials assert their own hand computations against the package, so a formula that drifts
from what a tutorial teaches fails here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"

# Tutorial -> the figures (and files) it promises, under $REBALANCE_TUTORIAL_OUT/<tutorial name>/.
FIGURES = {
    "01_relation_matrices": ["tau2_scaling.png", "teacher_relations.png", "blend_over_lambda.png",
                             "student_vs_target.png"],
    "02_losses_and_gradients": ["kd_terms_over_lambda.png", "tau2_drift.png"],
    "03_modal_imbalance": ["scenes.png", "presets.png", "caption_content.png", "teachers_vs_baselines.png"],
    "04_baseline_student": ["stage1_traces.png", "before_after_stage1.png"],
    "05_structure_distillation": ["stage2_traces.png", "full_vs_baseline.png", "run/plots/relations.png",
                                  "run/plots/traces.png"],
    "06_evaluation_protocol": ["recall_at_k.png", "ndcg_one_query.png"],
    "07_export_and_search": ["search_results.png", "bundle/manifest.json"],
    "08_other_answers": ["slerp_path.png", "universal_grid.png", "geometry.png", "cone.png", "shift.png"],
    "09_momentum_and_experts": ["momentum_vs_baseline.png", "expert_use.png"],
    "10_look_inside": ["sae_full.png", "sae_compare.png", "interactions_full.png", "word_patch_matrix.png"],
    "11_binary_codes": ["codes_vs_bits.png", "bundle/manifest.json", "run/codes/heads-64.pt"],
}

# Generous: fast mode targets 20 s on one thread of a busy 2-core machine; this only catches a hang.
TIMEOUT_S = 300
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _run(name: str, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "REBALANCE_FAST": "1", "REBALANCE_TUTORIAL_OUT": str(out), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, str(TUTORIALS / f"{name}.py")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_tutorial_runs_in_fast_mode_and_writes_its_figures(name, tmp_path):
    out, cwd = tmp_path / "out", tmp_path / "cwd"
    cwd.mkdir()
    result = _run(name, out, cwd)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "fast mode: True" in result.stdout
    for figure in FIGURES[name]:
        path = out / name / figure
        assert path.is_file(), f"{name} did not write {figure}; it wrote {sorted(p.name for p in out.rglob('*'))}"
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert not list(cwd.iterdir()), f"{name} wrote into its working directory: {list(cwd.iterdir())}"


def test_every_tutorial_is_tested_states_fast_mode_and_ends_with_exercises():
    scripts = sorted(p.stem for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert scripts == sorted(FIGURES), "a tutorial exists without a run test here (or the reverse)"
    for name in scripts:
        text = (TUTORIALS / f"{name}.py").read_text(encoding="utf-8")
        head = text[:1500]
        assert text.startswith("# %% [markdown]"), f"{name}: should open with a markdown cell"
        assert "REBALANCE_FAST=1" in head, f"{name}: fast mode must be stated at the top"
        assert "# %%" in text[200:], f"{name}: expected several cells"
        last_cell = text.rsplit("# %%", 1)[1]
        assert re.search(r"^# ## Exercises", last_cell, re.MULTILINE), f"{name}: should end with exercises"
        assert len(re.findall(r"^# \d\. ", last_cell, re.MULTILINE)) >= 3, f"{name}: expected several exercises"


def test_index_links_every_tutorial_in_order():
    index = (TUTORIALS / "README.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\((\d\d_[a-z0-9_]+\.py)\)", index)
    scripts = sorted(p.name for p in TUTORIALS.glob("[0-9][0-9]_*.py"))
    assert linked == scripts, f"README links {linked}, the folder holds {scripts}"
