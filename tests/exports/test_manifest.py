import json

import pytest

from exports.serving.manifest import BundleError, read_manifest, write_manifest
from exports.serving.runtime import Retriever


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_pristine_bundle_reads(bundle):
    assert read_manifest(bundle)["format_version"] == 2


def test_a_changed_byte_is_refused(bundle):
    path = bundle / "text_encoder.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other content
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="text_encoder.onnx does not match its SHA-256"):
        Retriever.load(bundle)


def test_a_resized_file_is_refused_even_without_hashing(bundle):
    with open(bundle / "tokenizer.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(BundleError, match="tokenizer.json has .* bytes"):
        read_manifest(bundle, verify_files=False)


def test_a_missing_file_is_refused(bundle):
    (bundle / "image_encoder.onnx").unlink()
    with pytest.raises(BundleError, match="incomplete: image_encoder.onnx is missing"):
        Retriever.load(bundle)


def test_a_missing_manifest_is_refused(bundle):
    (bundle / "manifest.json").unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        Retriever.load(bundle)


def test_an_unknown_format_version_is_refused(bundle):
    _edit_manifest(bundle, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="format version 99 is unknown"):
        Retriever.load(bundle)


def test_a_manifest_without_a_required_graph_is_refused(bundle):
    _edit_manifest(bundle, lambda m: m["files"].pop("text_encoder.onnx"))
    with pytest.raises(BundleError, match="lists no text_encoder.onnx"):
        read_manifest(bundle)


def test_a_file_entry_outside_the_bundle_is_refused(bundle):
    _edit_manifest(bundle, lambda m: m["files"].update({"../elsewhere.onnx": {"sha256": "0", "bytes": 1}}))
    with pytest.raises(BundleError, match="points outside the bundle"):
        read_manifest(bundle)


def test_write_manifest_hashes_files_added_later(bundle):
    (bundle / "extra.txt").write_text("notes")
    manifest = write_manifest(bundle, read_manifest(bundle))
    assert "extra.txt" in manifest["files"]
    (bundle / "extra.txt").write_text("edited")
    with pytest.raises(BundleError, match="extra.txt"):
        read_manifest(bundle)
