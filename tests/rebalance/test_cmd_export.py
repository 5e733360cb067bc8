import json

import pytest
from click.testing import CliRunner

from rebalance.cli.main import cli


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_and_data(tmp_path_factory):
    """A run folder holding a fresh student's checkpoint (through the trainer's checkpoint API) and a data folder
    with a small test split."""
    from rebalance_ref.karpathy import write_dataset
    from rebalance_ref.shapes import make_world
    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch import checkpoint as ckpt
    from rebalance_torch.config import TrainConfig
    from rebalance_torch.prepare import build_student

    root = tmp_path_factory.mktemp("cli")
    config = TrainConfig(n_train=8, n_val=4, n_test=12)
    world = make_world(12, "text-poor", seed=5)
    tokenizer = Tokenizer.build([c for caps in world.captions for c in caps], max_len=config.max_len)
    student = build_student(config, tokenizer)
    state = {"format": ckpt.FORMAT_VERSION, "config": config.to_dict(), "model_config": student.config.to_dict(),
             "student": student.state_dict()}
    ckpt.save_checkpoint(state, ckpt.checkpoint_path(root / "run", 1, "best"))
    tokenizer.save(root / "run" / "tokenizer.json")
    write_dataset(root / "data", {"test": world})
    return root, world


@pytest.fixture(scope="module")
def indexed(run_and_data):
    root, world = run_and_data
    result = _run("export", "--run", root / "run", "--out", root / "bundle", "--verify", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["verify"]["ok"] is True
    assert {c["batch"] for c in report["verify"]["outputs"]} == {1, 3, 5}
    result = _run("index", "--bundle", root / "bundle", "--data", root / "data", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"bundle": str(root / "bundle"), "images": 12, "captions": 60,
                                         "pixels": True, "code_bits": None}
    return root / "bundle", root / "data", world


def test_search_text_json_lists_k_hits_of_both_kinds(indexed):
    bundle, _, world = indexed
    result = _run("search", "--bundle", bundle, "--text", world.captions[0][0], "--k", 72, "--modality", "all",
                  "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["query"] == {"text": world.captions[0][0]} and len(out["hits"]) == 72
    assert {h["kind"] for h in out["hits"]} == {"image", "text"}
    assert [h["rank"] for h in out["hits"]] == list(range(1, 73))


def test_a_text_query_returns_images_by_default_ranked_from_1_and_shown_from_the_bundle(indexed):
    bundle, _, world = indexed
    result = _run("search", "--bundle", bundle, "--text", world.captions[0][0], "--k", 3, "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["hits"]
    assert [h["kind"] for h in hits] == ["image"] * 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["pixels"] == f"gallery/images.npy[{h['index']}]" for h in hits)
    text = _run("search", "--bundle", bundle, "--text", world.captions[0][0], "--k", 3).output
    assert "  1. image" in text and "  0. " not in text


def test_search_grid_writes_a_contact_sheet_and_keeps_an_existing_file_without_force(indexed, tmp_path):
    from PIL import Image

    bundle, data, world = indexed
    grid = tmp_path / "hits.png"
    result = _run("search", "--bundle", bundle, "--image", data / "images" / world.names[0], "--k", 4, "--grid", grid)
    assert result.exit_code == 0, result.output
    with Image.open(grid) as sheet:
        assert sheet.format == "PNG" and sheet.width >= 5 * 128  # the query and four hits
    before = grid.read_bytes()
    again = _run("search", "--bundle", bundle, "--text", "a red circle", "--grid", grid)
    assert again.exit_code == 2 and "--force" in again.output and grid.read_bytes() == before
    assert _run("search", "--bundle", bundle, "--text", "a red circle", "--grid", grid, "--force").exit_code == 0
    assert grid.read_bytes() != before


def test_index_over_a_gallery_needs_force(indexed, tmp_path):
    import shutil

    bundle, data, _ = indexed
    copy = shutil.copytree(bundle, tmp_path / "b")
    result = _run("index", "--bundle", copy, "--data", data, "--what", "images")
    assert result.exit_code == 2 and "already holds a gallery; pass --force" in result.output
    result = _run("index", "--bundle", copy, "--data", data, "--what", "images", "--force", "--json")
    assert result.exit_code == 0 and json.loads(result.output)["captions"] == 0


def test_export_over_a_bundle_needs_force(indexed, run_and_data):
    root, _ = run_and_data
    bundle, _, _ = indexed
    result = _run("export", "--run", root / "run", "--out", bundle)
    assert result.exit_code == 1 and "pass --force" in result.output
    assert (bundle / "gallery" / "embeddings.npy").is_file()


def test_search_image_with_rerank_returns_captions_with_itm(indexed):
    bundle, data, world = indexed
    image = data / "images" / world.names[0]
    result = _run("search", "--bundle", bundle, "--image", image, "--k", 3, "--rerank", "--json")
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)["hits"]
    assert [h["kind"] for h in hits] == ["text"] * 3
    assert [h["itm"] for h in hits] == sorted((h["itm"] for h in hits), reverse=True)
    plain = _run("search", "--bundle", bundle, "--image", image, "--k", 2)
    assert plain.exit_code == 0 and plain.output.count("cos ") == 2


def test_search_needs_exactly_one_query(indexed):
    bundle, _, _ = indexed
    assert _run("search", "--bundle", bundle).exit_code == 2
    both = _run("search", "--bundle", bundle, "--text", "a", "--image", "x.png")
    assert both.exit_code == 2 and "exactly one of --text or --image" in both.output


def test_search_refuses_a_tampered_bundle_with_a_clear_message(indexed, tmp_path):
    import shutil

    bundle, _, _ = indexed
    copy = shutil.copytree(bundle, tmp_path / "b")
    (copy / "gallery" / "items.json").write_text("{}")
    result = _run("search", "--bundle", copy, "--text", "a red circle")
    assert result.exit_code == 1
    assert "gallery/items.json" in result.output and "Traceback" not in result.output


def test_export_names_a_missing_run(tmp_path):
    result = _run("export", "--run", tmp_path / "nope", "--out", tmp_path / "b")
    assert result.exit_code == 1 and "does not exist" in result.output


NO_TORCH_CLI = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
from rebalance.cli.main import cli
cli(sys.argv[1:])
"""


def test_the_search_command_runs_where_torch_cannot_be_imported(indexed):
    """Every command module is imported by the CLI group: none may import torch at module level."""
    import subprocess
    import sys
    from pathlib import Path

    bundle, _, _ = indexed
    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", NO_TORCH_CLI, "search", "--bundle", str(bundle), "--text",
                          "a red circle", "--k", "2", "--json"], cwd=repo, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["hits"]) == 2
