"""The bundle's `manifest.json`: format version, model dims, graphs, library versions and the SHA-256 of every file.

Standard library (+ rebalance_ref.files) only, so the torch-free runtime and the torch-side exporter share it. A
bundle is a folder:

    manifest.json          this file (not hashed: it holds the hashes)
    image_encoder.onnx     images float32 (B, 3, S, S) in [0, 1] -> v float32 (B, D), unit rows
    text_encoder.onnx      ids int64 (B, L), mask int64 (B, L) -> t float32 (B, D), unit rows
    fusion_itm.onnx        images, ids, mask -> itm_logits float32 (B, 2) (pair i = image i with text i)
    tokenizer.json         the word-level tokenizer (rebalance_ref.tokenizer)
    codes_image.onnx       optional (version 2): image embeddings float32 (B, D) -> h float32 (B, bits), the
    codes_text.onnx        relaxed codes (sign(h) > 0 is the code); one `codes.onnx` when the head is shared
    gallery/...            optional: embeddings, item lists (and packed codes) written by `rebalance index`

Versions: 1 has no codes; 2 adds the optional `codes` section {"bits", "graphs": {"image": graph name, "text":
graph name}} naming the code graphs of `onnx.graphs`. Both are read; a manifest is written with its own version
(a version-1 bundle indexed again stays version 1), a new export is version 2.

`read_manifest` refuses, with a `BundleError` (a ValueError) naming the problem, a folder without a manifest, a
manifest of another format or version, a `model` or `onnx` section of the wrong shape, a listed file that is
missing, lies outside the bundle, or whose size or SHA-256 differs, and a manifest that lacks a required graph.
Writing is atomic (temporary file, then `os.replace`).

Writers of a bundle (`rebalance export`, `rebalance index`, `Retriever.save_gallery`) hold `bundle_lock`: an
exclusive `fcntl.flock` on a lock file beside the bundle (`.<name>.lock` in its parent folder, so the lock
outlives a bundle folder replaced by export). A second writer fails at once with a message saying so; the kernel
releases the lock when its holder exits, even when killed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rebalance_ref.files import DataError, path_inside, read_json, write_json_atomic

FORMAT = "rebalance-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
REQUIRED_FILES = ("image_encoder.onnx", "text_encoder.onnx", "tokenizer.json")
# manifest["model"]: the dims the runtime needs, each a positive int.
MODEL_FIELDS = ("embed_dim", "image_size", "max_len", "vocab_size")
_CHUNK = 1 << 20


class BundleError(ValueError):
    """A bundle folder that cannot be used: missing, incomplete, tampered, locked or of an unknown format."""


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_record(data: bytes) -> dict:
    """{"sha256", "bytes"} of content held in memory: a writer records what it wrote, not what is on disk later."""
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def file_record(bundle_dir: str | Path, relative: str) -> dict:
    """{"sha256", "bytes"} of one file of the bundle, named by its path relative to the bundle."""
    path = Path(bundle_dir) / relative
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def list_files(bundle_dir: str | Path) -> list[str]:
    """Every file under the bundle folder except the manifest, as sorted POSIX paths relative to it."""
    root = Path(bundle_dir)
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp"))


def write_manifest(bundle_dir: str | Path, manifest: dict, records: dict[str, dict] | None = None) -> dict:
    """Write manifest.json atomically with `manifest["files"]` = `records` (name -> {"sha256", "bytes"}).

    Without `records`, every file of the folder is hashed from disk: only for a folder the caller has just
    filled and nobody else writes to (the exporter's private temporary folder)."""
    bundle_dir = Path(bundle_dir)
    manifest = dict(manifest)
    manifest["format"], manifest["format_version"] = FORMAT, manifest.get("format_version", FORMAT_VERSION)
    if records is None:
        records = {name: file_record(bundle_dir, name) for name in list_files(bundle_dir)}
    manifest["files"] = dict(sorted(records.items()))
    write_json_atomic(bundle_dir / MANIFEST, manifest, indent=2, sort_keys=True)
    return manifest


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_sections(path: Path, manifest: dict) -> None:
    """Raise BundleError unless `model` holds the runtime's dims and `onnx.graphs` maps names to graph entries."""
    model = manifest.get("model")
    if not isinstance(model, dict):
        raise BundleError(f"{path}: 'model' must be an object with {', '.join(MODEL_FIELDS)}, got "
                          f"{type(model).__name__ if model is not None else 'nothing'}")
    for name in MODEL_FIELDS:
        if not _positive_int(model.get(name)):
            raise BundleError(f"{path}: model.{name} must be a positive whole number, got {model.get(name)!r:.40}")
    onnx = manifest.get("onnx")
    if not isinstance(onnx, dict) or not isinstance(onnx.get("graphs"), dict):
        raise BundleError(f"{path}: 'onnx' must be an object whose 'graphs' maps each graph name to its file, got "
                          f"{type(onnx).__name__ if onnx is not None else 'nothing'}")
    for name, graph in onnx["graphs"].items():
        if not isinstance(graph, dict) or not isinstance(graph.get("file"), str):
            raise BundleError(f"{path}: onnx.graphs.{name} must be an object naming its 'file'")
    gallery = manifest.get("gallery")
    if gallery is not None and not isinstance(gallery, dict):
        raise BundleError(f"{path}: 'gallery' must be an object or null, got {type(gallery).__name__}")
    check_codes_section(path, manifest)


def check_codes_section(path: Path, manifest: dict) -> None:
    """Raise BundleError unless the optional `codes` section (version 2) gives `bits`, a positive multiple of 8,
    and `graphs` naming an image and a text graph of `onnx.graphs`."""
    codes = manifest.get("codes")
    if codes is None:
        return
    if manifest.get("format_version") == 1:
        raise BundleError(f"{path}: a version-1 bundle has no 'codes' section (codes came with version 2)")
    if not isinstance(codes, dict) or not _positive_int(codes.get("bits")) or codes["bits"] % 8:
        raise BundleError(f"{path}: codes.bits must be a positive multiple of 8, got "
                          f"{codes.get('bits') if isinstance(codes, dict) else codes!r:.40}")
    graphs = codes.get("graphs")
    if not isinstance(graphs, dict) or set(graphs) != {"image", "text"}:
        raise BundleError(f"{path}: codes.graphs must name the 'image' and the 'text' code graph")
    for side, name in graphs.items():
        if name not in manifest["onnx"]["graphs"]:
            raise BundleError(f"{path}: codes.graphs.{side} names {name!r:.40}, which onnx.graphs does not list")


def read_manifest(bundle_dir: str | Path, verify_files: bool = True) -> dict:
    """The manifest of a bundle, after checking its format, version, sections and (by default) every file's hash."""
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
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise BundleError(f"{path}: bundle format version {version!r} is unknown; this rebalance reads versions "
                          f"{', '.join(map(str, READABLE_VERSIONS))} (export the bundle again with this version)")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise BundleError(f"{path}: 'files' must map each file of the bundle to its sha256 and size")
    missing_required = [name for name in REQUIRED_FILES if name not in files]
    if missing_required:
        raise BundleError(f"{path}: the manifest lists no {', '.join(missing_required)}")
    check_sections(path, manifest)
    for name, record in files.items():
        check_file(bundle_dir, name, record, verify_hash=verify_files)
    return manifest


def check_file(bundle_dir: Path, name: str, record: dict, verify_hash: bool = True) -> None:
    """Raise BundleError unless `name` exists inside the bundle with the recorded size (and SHA-256)."""
    try:
        target = path_inside(bundle_dir, name, str(bundle_dir / MANIFEST), "file entry")
    except DataError as error:
        raise BundleError(f"{error} (points outside the bundle)") from None
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


def lock_path(bundle_dir: str | Path) -> Path:
    """The lock file of a bundle: `.<name>.lock` beside it, in its parent folder."""
    bundle_dir = Path(bundle_dir).absolute()
    return bundle_dir.with_name(f".{bundle_dir.name}.lock")


_HELD: dict[str, list] = {}  # lock path -> [file descriptor, depth]: the lock is re-entrant within a process


@contextmanager
def bundle_lock(bundle_dir: str | Path) -> Iterator[None]:
    """Hold the bundle's writer lock for the block; raise BundleError at once if another process holds it.

    Re-entrant in one process (an `index` command that holds it may call `save_gallery`, which takes it too)."""
    import fcntl  # POSIX only, imported here so that reading a bundle works everywhere

    path = lock_path(bundle_dir)
    key = str(path)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BundleError(f"bundle {bundle_dir} is being written by another process (it holds the lock {path}); "
                              f"wait for it to finish, then try again") from None
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
