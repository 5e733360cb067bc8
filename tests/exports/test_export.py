import json

import numpy as np
import pytest

from exports.exporter import export as export_module
from exports.exporter.export import EXPORT_BATCH, OPSET, export_student
from exports.exporter.verify import BATCH_SIZES, TOLERANCES, text_lengths, verify_bundle
from exports.serving.manifest import FORMAT, FORMAT_VERSION, sha256_file
from tests.exports.conftest import MAX_LEN


def test_manifest_records_format_dims_opset_libraries_and_every_file(exported, student_and_tokenizer):
    student, tokenizer = student_and_tokenizer
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    assert manifest["model"]["embed_dim"] == student.config.embed_dim
    assert manifest["model"]["vocab_size"] == tokenizer.vocab_size
    assert manifest["onnx"] == {**manifest["onnx"], "opset": OPSET, "exporter": "torchscript",
                                "export_batch": EXPORT_BATCH}
    assert set(manifest["onnx"]["graphs"]) == {"image_encoder", "text_encoder", "fusion_itm"}
    assert manifest["libraries"]["torch"] and manifest["libraries"]["onnxruntime"]
    files = sorted(p.name for p in exported.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    for name, record in manifest["files"].items():
        assert record["sha256"] == sha256_file(exported / name)


def test_graphs_have_dynamic_batch_and_length(exported):
    import onnx

    for name, inputs in (("image_encoder", ["batch"]), ("text_encoder", ["batch", "length"])):
        graph = onnx.load(str(exported / f"{name}.onnx")).graph
        dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim if d.dim_param]
        assert dims == inputs


def test_verify_passes_at_batch_sizes_and_lengths_other_than_the_traced_one(exported, student_and_tokenizer, world):
    student, tokenizer = student_and_tokenizer
    report = verify_bundle(exported, student, tokenizer, world)
    assert report.ok, report.table()
    checked = {(c.graph, c.batch, c.length) for c in report.outputs}
    assert {b for _, b, _ in checked} == set(BATCH_SIZES)
    assert {length for g, _, length in checked if g == "text_encoder"} == set(text_lengths(MAX_LEN))
    assert all(c.max_abs_diff <= TOLERANCES[c.output] for c in report.outputs)
    for direction in ("image->text", "text->image"):
        assert report.rankings[direction]["equal_up_to_ties"] == report.rankings[direction]["queries"]
    assert report.recall["bundle"] == report.recall["torch"]
    assert "verification passed" in report.table()


def test_verify_fails_against_another_student(exported, student_and_tokenizer, world):
    from rebalance_torch.models import Student

    student, tokenizer = student_and_tokenizer
    other = Student(student.config, seed=1).eval()
    report = verify_bundle(exported, other, tokenizer, world, batch_sizes=(3,), lengths=(5,))
    assert not report.ok
    assert not any(c.ok for c in report.outputs)
    assert "verification FAILED" in report.table()


def test_export_refuses_a_folder_that_is_not_a_bundle(tmp_path, student_and_tokenizer):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty and is not a bundle"):
        export_student(*student_and_tokenizer, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_failed_export_leaves_the_previous_bundle_intact(bundle, student_and_tokenizer, monkeypatch):
    before = (bundle / "manifest.json").read_text()

    def broken(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(export_module, "_export_graph", broken)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_student(*student_and_tokenizer, bundle, force=True)
    assert (bundle / "manifest.json").read_text() == before
    assert [p.name for p in bundle.parent.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


@pytest.mark.parametrize(("kwargs", "match"), [({"exporter": "jit"}, "exporter must be one of"),
                                               ({"opset": 13}, "opset must be an int >= 17")])
def test_bad_export_options_are_named(tmp_path, student_and_tokenizer, kwargs, match):
    with pytest.raises(ValueError, match=match):
        export_student(*student_and_tokenizer, tmp_path / "b", **kwargs)


def test_export_and_search_serves_a_run_folder(tmp_path, student_and_tokenizer, world):
    from exports.exporter.export import export_and_search
    from exports.serving.runtime import Retriever
    from rebalance_torch import checkpoint as ckpt
    from rebalance_torch.config import TrainConfig

    student, tokenizer = student_and_tokenizer
    config = TrainConfig(max_len=MAX_LEN)
    state = {"format": ckpt.FORMAT_VERSION, "config": config.to_dict(), "model_config": student.config.to_dict(),
             "student": student.state_dict()}
    ckpt.save_checkpoint(state, ckpt.checkpoint_path(tmp_path, 2, "best"))
    tokenizer.save(tmp_path / "tokenizer.json")
    retriever, query, hits = export_and_search(tmp_path, tmp_path / "bundle", world, k=3)
    bundle = retriever.bundle_dir
    assert query == world.captions[0][0]
    assert [h.kind for h in hits] == ["image"] * 3  # a text query searches the images by default
    assert [h.rank for h in hits] == [1, 2, 3]
    np.testing.assert_array_equal(retriever.hit_pixels(hits[0]), world.images[hits[0].index])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["source"]["checkpoint"] == "stage2-best.pt" and manifest["k_test"] == config.k_test
    assert manifest["gallery"] == {"folder": "gallery", "n_images": len(world), "n_captions": 5 * len(world),
                                   "pixels": True}
    assert Retriever.load(bundle).gallery.n_images == len(world)


def test_ranks_within_ties_accepts_near_ties_and_refuses_real_changes():
    import numpy as np

    from exports.exporter.verify import RANK_TIE, ranks_within_ties

    txt2img = np.array([0, 0, 1, 1])
    torch_sims = np.array([[0.9, 0.5, 0.9 + RANK_TIE / 4, 0.1], [0.2, 0.3, 0.8, 0.7]], np.float32)
    flipped = torch_sims.copy()
    flipped[0, 2] = 0.9 - RANK_TIE / 4  # the near-tie of image 0's caption 0 and caption 2 swaps
    assert ranks_within_ties(flipped, torch_sims, txt2img)
    moved = torch_sims.copy()
    moved[0, 2] = 0.5  # a real change of score
    assert not ranks_within_ties(moved, torch_sims, txt2img)
