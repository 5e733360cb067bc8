"""Bundles are written by one writer at a time, record what was written, serve only listed files, and never lose
a user's file: the guarantees of docs/guarantees.md ("Bundles")."""

import fcntl
import json
import os

import numpy as np
import pytest

from exports.exporter.export import export_student
from exports.serving import runtime as runtime_module
from exports.serving.manifest import BundleError, bundle_lock, lock_path, read_manifest
from exports.serving.runtime import Retriever, index_split


def _edit_manifest(bundle, change):
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


@pytest.fixture
def indexed(bundle, world):
    retriever = Retriever.load(bundle)
    index_split(retriever, world)
    retriever.save_gallery()
    return bundle


def test_a_gallery_file_left_out_of_the_manifest_is_refused_not_served(indexed):
    _edit_manifest(indexed, lambda m: m["files"].pop("gallery/images.npy"))
    with pytest.raises(BundleError, match="gallery/images.npy is not listed in the manifest"):
        Retriever.load(indexed)
    _edit_manifest(indexed, lambda m: m["files"].pop("gallery/items.json"))
    with pytest.raises(BundleError, match="gallery/items.json is not listed"):
        Retriever.load(indexed)


def test_a_second_writer_fails_clearly_while_the_first_holds_the_lock(indexed, world):
    retriever = Retriever.load(indexed)
    fd = os.open(lock_path(indexed), os.O_RDWR | os.O_CREAT)  # another writer (a separate open file description)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BundleError, match="being written by another process"):
            retriever.save_gallery()
    finally:
        os.close(fd)
    with bundle_lock(indexed), bundle_lock(indexed):  # re-entrant in one process; free again once released
        retriever.save_gallery()
    assert Retriever.load(indexed).gallery.n_images == len(world)


def test_a_writer_whose_bundle_changed_since_loading_is_refused(indexed, world):
    first, second = Retriever.load(indexed), Retriever.load(indexed)
    index_split(first, world, what="images")
    first.save_gallery()
    index_split(second, world, what="captions")
    with pytest.raises(BundleError, match="changed since it was loaded"):
        second.save_gallery()
    again = Retriever.load(indexed)  # the first writer's gallery, whole
    assert (again.gallery.n_images, again.gallery.n_captions) == (len(world), 0)


def test_index_records_the_bytes_it_wrote_not_a_file_changed_later(indexed, world, monkeypatch):
    retriever = Retriever.load(indexed)
    index_split(retriever, world)
    real_write = runtime_module.write_manifest

    def tamper_then_write(bundle_dir, manifest, records=None):
        path = bundle_dir / "gallery" / "embeddings.npy"
        np.save(path, np.load(path)[::-1].copy())  # same size, rows swapped, while the writer runs
        return real_write(bundle_dir, manifest, records)

    monkeypatch.setattr(runtime_module, "write_manifest", tamper_then_write)
    retriever.save_gallery()
    with pytest.raises(BundleError, match="gallery/embeddings.npy does not match its SHA-256"):
        read_manifest(indexed)


@pytest.mark.parametrize(("change", "match"), [
    (lambda m: m.pop("model"), "'model' must be an object"),
    (lambda m: m["model"].update(embed_dim="big"), "model.embed_dim must be a positive whole number"),
    (lambda m: m.update(onnx=[1, 2]), "'onnx' must be an object"),
    (lambda m: m["onnx"].update(graphs={"image_encoder": "x.onnx"}), "onnx.graphs.image_encoder must be an object"),
])
def test_a_manifest_with_malformed_sections_is_a_bundle_error(bundle, change, match):
    _edit_manifest(bundle, change)
    with pytest.raises(BundleError, match=match):
        Retriever.load(bundle)


def test_export_replaces_a_bundle_only_with_force_and_never_deletes_a_users_file(indexed, student_and_tokenizer):
    with pytest.raises(ValueError, match="already holds a bundle; pass --force"):
        export_student(*student_and_tokenizer, indexed)
    (indexed / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files the bundle does not list \(notes.txt\)"):
        export_student(*student_and_tokenizer, indexed, force=True)
    assert (indexed / "notes.txt").read_text() == "mine" and (indexed / "gallery" / "images.npy").is_file()
    (indexed / "notes.txt").unlink()
    export_student(*student_and_tokenizer, indexed, force=True)
    assert not (indexed / "gallery").exists()  # the old gallery, which the old manifest listed, is gone
    assert read_manifest(indexed)["gallery"] is None
    assert sorted(p.name for p in indexed.parent.iterdir() if p.name.startswith(".")) == [".bundle.lock"]
