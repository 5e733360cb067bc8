"""The bundle's `manifest.json`: format version, model dims, graphs, library versions and the SHA-256 of every file.

Standard library only, so the torch-free runtime and the torch-side exporter share it. A bundle is a folder:

    manifest.json          this file (not hashed: it holds the hashes)
    image_encoder.onnx     images float32 (B, 3, S, S) in [0, 1] -> v float32 (B, D), unit rows
    text_encoder.onnx      ids int64 (B, L), mask int64 (B, L) -> t float32 (B, D), unit rows
    fusion_itm.onnx        images, ids, mask -> itm_logits float32 (B, 2) (pair i = image i with text i)
    tokenizer.json         the word-level tokenizer (rebalance_ref.tokenizer)
    gallery/...            optional: embeddings and item lists written by `rebalance index`

`read_manifest` refuses, with a `BundleError` (a ValueError) naming the problem, a folder without a manifest, a
manifest of another format or version, a listed file that is missing or whose size or SHA-256 differs, and a
manifest that lacks a required graph. Writing is atomic (temporary file, then `os.replace`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from rebalance_ref.files import read_json, write_json_atomic

FORMAT = "rebalance-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REQUIRED_FILES = ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json")
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle folder that cannot be used: missing, incomplete, tampered or of an unknown format."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(bundle_dir: str | Path, relative: str) -> dict:
    """{"sha256", "bytes"} of one file of the bundle, named by its path relative to the bundle."""
    path = Path(bundle_dir) / relative
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def list_files(bundle_dir: str | Path) -> list[str]:
    """Every file under the bundle folder except the manifest, as sorted POSIX paths relative to it."""
    root = Path(bundle_dir)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"))


def write_manifest(bundle_dir: str | Path, manifest: dict) -> dict:
    """Hash every file of the bundle into `manifest["files"]`, then write manifest.json atomically."""
    bundle_dir = Path(bundle_dir)
    manifest = dict(manifest)
    manifest["format"], manifest["format_version"] = FORMAT, FORMAT_VERSION
    manifest["files"] = {name: file_record(bundle_dir, name) for name in list_files(bundle_dir)}
    path = bundle_dir / MANIFEST
    write_json_atomic(path, manifest, indent=2, sort_keys=True)
    return manifest


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> dict:
    """The manifest of a bundle, after checking its format, version and (by default) every file's hash."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"bundle folder {bundle_dir} does not exist")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: {MANIFEST} is missing")
    manifest = read_json(path, error=BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a rebalance bundle manifest (expected format {FORMAT!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format version {version!r} is unknown; this rebalance reads version "
                          f"{FORMAT_VERSION} (export the bundle again with this version)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: 'files' must map each file of the bundle to its sha256 and size")
    missing_required = [name for name in REQUIRED_FILES if name not in files]
    if missing_required:
        raise BundleError(f"{path}: the manifest lists no {', '.join(missing_required)}")
    for name, record in files.items():
        check_file(bundle_dir, name, record, verify_hash=verify_files)
    return manifest


def check_file(bundle_dir: Path, name: str, record: dict, verify_hash: bool = True) -> None:
    """Raise BundleError unless `name` exists inside the bundle with the recorded size (and SHA-256)."""
    target = (bundle_dir / name).resolve()
    if bundle_dir.resolve() not in target.parents:
        raise BundleError(f"{bundle_dir / MANIFEST}: file entry {name!r} points outside the bundle")
    if not target.is_file():
        raise BundleError(f"bundle {bundle_dir} is incomplete: {name} is missing")
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise BundleError(f"{bundle_dir / MANIFEST}: entry for {name} has no sha256")
    size = target.stat().st_size
    if size != record.get("bytes"):
        raise BundleError(f"bundle {bundle_dir}: {name} has {size} bytes, the manifest says {record.get('bytes')} "
                          f"(the file was changed after export)")
    if verify_hash and sha256_file(target) != record["sha256"]:
        raise BundleError(f"bundle {bundle_dir}: {name} does not match its SHA-256 in the manifest (the file was "
                          f"changed after export)")
