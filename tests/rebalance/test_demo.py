import json
import re

import pytest
import torch
from click.testing import CliRunner

from rebalance.cli.main import cli
from rebalance.demo import DEMO_RECIPE, FAST, demo_config, full_name, summarise
from rebalance_torch.checkpoint import load_student


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("demo") / "run"
    result = CliRunner().invoke(cli, ["demo", "--fast", "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, result.stdout


def test_demo_fast_runs_end_to_end_into_one_folder(demo):
    out, stdout = demo
    results = json.loads((out / "results.json").read_text())
    full_row = full_name(demo_config(fast=True))   # "stage 2 full objective, rebalanced recipe"
    assert full_row.startswith("stage 2 full objective") and (DEMO_RECIPE in full_row) == (DEMO_RECIPE != "official")
    assert list(results["rows"]) == ["stage 1 (ITC + 2·ITM)", "stage 2 baseline (ITC + 2·ITM)", full_row]
    for row in results["rows"].values():
        assert 0 <= row["cos_r_mean"] <= 100 and 0 <= row["attr_i2i@10"] <= 100
    diff = results["full_minus_baseline"]
    full, base = results["rows"][full_row], results["rows"]["stage 2 baseline (ITC + 2·ITM)"]
    assert diff["attr_i2i@10"] == pytest.approx(full["attr_i2i@10"] - base["attr_i2i@10"])
    assert set(results["phases_s"]) >= {"data", "teachers", "stage1", "stage2 baseline", "stage2 full", "eval",
                                        "total"}
    assert results["config"] == demo_config(fast=True).to_dict()
    assert results["config"]["teacher_tau"] == demo_config(fast=True, recipe=DEMO_RECIPE).teacher_tau
    for name in ("results.md", "report.md", "plots/full_vs_baseline.png", "plots/traces.png", "plots/relations.png",
                 "plots/search.png",
                 "plots/modality_gap.png", "baseline/plots/relations.png", "baseline/plots/modality_gap.png",
                 "teacher_check.json", "baseline/eval.json", "teachers/report.json", "bundle/manifest.json"):
        assert (out / name).is_file(), name
    assert f"| {full_row} |" in stdout and "Full vs baseline:" in stdout
    search = results["search"]  # the exported bundle answered one query through onnxruntime
    assert len(search["hits"]) == 5 and search["query"] in stdout
    # the showcase search answers a text with images, ranked from 1, each shown from the bundle in the run folder
    assert [h["kind"] for h in search["hits"]] == ["image"] * 5
    assert [h["rank"] for h in search["hits"]] == [1, 2, 3, 4, 5]
    assert all(h["pixels"] == f"gallery/images.npy[{h['index']}]" for h in search["hits"])
    assert search["grid"] == "plots/search.png"
    assert "![search](plots/search.png)" in (out / "results.md").read_text()


def test_the_demo_report_explains_its_columns_flags_and_shows_each_figure_once(demo):
    out, stdout = demo
    results = json.loads((out / "results.json").read_text())
    # --fast evaluates with k_test 8 < 10: every row says its ITM recall mixes in cosine ranks
    assert sum("k_test = 8 is below R@10" in note for note in results["cautions"]) == 3
    assert stdout.count("caution: ") == len(results["cautions"])
    for name in ("results.md", "report.md"):
        text = (out / name).read_text()
        assert "**gap**: modality gap" in text and "higher is better" in text and "k_test = 8" in text
        images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
        assert images and len(images) == len(set(images)), (name, images)
    report = (out / "report.md").read_text()
    assert "# Run `run`: stage 2 full objective" in report
    assert "| stage 2 full objective |" in report and "| run |" in report


def test_the_demo_folder_loads_as_the_full_run_and_its_baseline(demo):
    out, _ = demo
    student, config, tokenizer = load_student(out)
    assert config.weights["kd"] == 2.0 and config.n_train == FAST["n_train"]
    _, baseline_config, _ = load_student(out / "baseline")
    assert baseline_config.weights == {"itc": 1.0, "itm": 2.0}
    assert tokenizer.vocab_size == student.config.vocab_size


def test_the_demo_takes_the_official_recipe_one_flag_away():
    official, ours = demo_config(recipe="official"), demo_config()
    assert official.recipe() == "official" and ours.recipe() == DEMO_RECIPE
    assert official.replace(**{k: getattr(ours, k) for k in ("teacher_tau", "teacher_warmup", "teacher_ramp",
                                                             "teacher_scale")}) == ours  # stage 2's objective only
    assert full_name(official) == "stage 2 full objective"


def test_summary_names_each_claim():
    text = summarise({"cos_r_mean": -2.0, "itm_r_mean": 0.1, "attr_i2i@10": 3.0, "attr_t2t@10": 0.2,
                      "attr_i2it@10": -1.0, "attr_t2it@10": 0.0})
    assert "cross-modal R-mean down (-2.00" in text and "I2I NDCG@10 up (+3.00" in text
    assert "T2T NDCG@10 about the same" in text and "I2IT NDCG@10 down" in text
