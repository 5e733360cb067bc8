"""The docs' tables are the recorded runs' tables, and the records match the code's configuration."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rebalance.cli.main import cli
from rebalance.demo import demo_config
from rebalance.recorded import (
    DEMO_BLOCK,
    RECORDED_DIR,
    ablation_block_name,
    blocks_in,
    demo_block,
    load_records,
    replace_blocks,
)
from rebalance_torch.config import RUNTIME_FIELDS, TrainConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS_WITH_THE_DEMO_TABLE = ("README.md", "docs/results.md")


@pytest.fixture(scope="module")
def records():
    return load_records(ROOT / RECORDED_DIR)


@pytest.mark.parametrize("doc", DOCS_WITH_THE_DEMO_TABLE)
def test_the_docs_demo_table_is_the_one_the_recorded_run_printed(records, doc):
    blocks = blocks_in((ROOT / doc).read_text(), doc)
    assert DEMO_BLOCK in blocks, f"{doc} has no <!-- {DEMO_BLOCK}:begin/end --> block"
    assert blocks[DEMO_BLOCK] == demo_block(records[DEMO_BLOCK]), (
        f"{doc}'s demo table differs from docs/recorded/demo.json: run `rebalance report tables --write {doc}`")


def test_the_recorded_demo_ran_at_the_demos_current_configuration(records):
    recorded = TrainConfig.from_dict(records[DEMO_BLOCK]["config"])
    differences = recorded.differences(demo_config(), ignore=RUNTIME_FIELDS)
    assert differences == {}, ("the demo's configuration changed since the recorded run: re-run `rebalance demo "
                               f"--threads 1` and `rebalance report tables --demo RUN --write ...` ({differences})")
    assert records[DEMO_BLOCK]["code"]["commit"], "the record names the commit that produced it"


def test_every_ablation_record_has_its_block_in_the_docs(records):
    text = (ROOT / "docs/results.md").read_text()
    for name in records:
        if name != DEMO_BLOCK:
            assert name in blocks_in(text, "docs/results.md"), name


def test_blocks_are_replaced_between_their_markers_only():
    text = "intro\n<!-- a:begin -->\nold\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nkeep\n<!-- b:end -->\n"
    new, done = replace_blocks(text, {"a": "| new |", "c": "unused"})
    assert done == ["a"]
    assert new == text.replace("old", "| new |")
    assert blocks_in(new) == {"a": "| new |", "b": "keep"}
    for broken in ("<!-- a:begin -->\nx\n", "x\n<!-- a:end -->\n", "<!-- a:begin -->\n<!-- b:begin -->\n"):
        with pytest.raises(ValueError, match="doc.md"):
            blocks_in(broken, "doc.md")


def _fake_demo(folder: Path) -> dict:
    row = {"cos_r_mean": 12.5, "itm_r_mean": 11.0, "attr_i2i@10": 60.0, "modality_gap": 0.5}
    results = {"config": demo_config().to_dict(), "rows": {"stage 1 (ITC + 2·ITM)": row,
                                                          "stage 2 full objective": {**row, "cos_r_mean": 20.25}},
               "cautions": ["stage 1 (ITC + 2·ITM): a caution"], "full_minus_baseline": {"cos_r_mean": 7.75},
               "phases_s": {"total": 1.0}, "code": {"commit": "0123456789abcdef", "dirty": False}}
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(results))
    return results


def test_report_tables_records_runs_and_rewrites_the_marked_blocks(tmp_path):
    _fake_demo(tmp_path / "demo")
    ablation = {"preset": "balanced", "seeds": 2, "jobs": 1, "config": {}, "seconds": {"total": 12.0},
                "table": {"baseline": {"cos_r_mean": [50.0, 1.0]}, "diff": {"full": {"cos_r_mean": [-3.0, 0.5]}}}}
    (tmp_path / "abl").mkdir()
    (tmp_path / "abl" / "ablation.json").write_text(json.dumps(ablation))
    doc = tmp_path / "README.md"
    block = ablation_block_name("balanced")
    doc.write_text(f"# t\n<!-- {DEMO_BLOCK}:begin -->\nold\n<!-- {DEMO_BLOCK}:end -->\n"
                   f"<!-- {block}:begin -->\n<!-- {block}:end -->\n")
    result = CliRunner().invoke(cli, ["report", "tables", "--demo", str(tmp_path / "demo"), "--ablation",
                                      str(tmp_path / "abl"), "--recorded", str(tmp_path / "rec"), "--write",
                                      str(doc)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = doc.read_text()
    assert "| stage 2 full objective | 20.25 |" in text and "commit 0123456" in text and "a caution" in text
    assert "| full − baseline | -3.00 ± 0.50 |" in text and "old" not in text
    assert json.loads((tmp_path / "rec" / "demo.json").read_text())["rows"]["stage 2 full objective"][
        "cos_r_mean"] == 20.25
    again = CliRunner().invoke(cli, ["report", "tables", "--recorded", str(tmp_path / "rec"), "--write", str(doc)])
    assert again.exit_code == 0 and doc.read_text() == text  # regenerating from the records changes nothing
    again = CliRunner().invoke(cli, ["report", "tables", "--recorded", str(tmp_path / "rec"), "--write", str(doc),
                                     str(doc)])
    assert again.exit_code == 0 and doc.read_text() == text  # regenerating from the records changes nothing


def test_report_tables_names_a_folder_that_is_not_a_demo_run(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{}")
    result = CliRunner().invoke(cli, ["report", "tables", "--demo", str(tmp_path / "run"), "--recorded",
                                      str(tmp_path / "rec")])
    assert result.exit_code == 1 and "results.json lacks config" in result.output
