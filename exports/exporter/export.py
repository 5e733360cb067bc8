"""Torch side of the bundle: export a student's towers and ITM scorer to ONNX, with its tokenizer and manifest.

`export_bundle(run_dir, bundle_dir)` takes a trained run (via `rebalance_torch.checkpoint.load_student`);
`export_student(student, tokenizer, bundle_dir)` takes any `Student`. Both write the bundle described in
`exports.serving.manifest`: three graphs (and, given hash heads, the code graphs) with a dynamic batch (and a
dynamic text length for the text inputs), traced at batch `EXPORT_BATCH` = 2 so that no size-1 batch dimension
can be specialised into the graph.

Exporter: the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), passed explicitly. Torch 2.13
also offers the torch.export-based one (`dynamo=True`, its default since 2.9; onnxscript is installed), and
`exporter="dynamo"` selects it. We default to TorchScript because on the project's 2-core machine it exports the
three graphs in about 2 s where the dynamo exporter took 60-90 s (it re-traces and optimises each graph), which
would dominate the demo and the test suite; the student is written without data-dependent control flow (input
checks are skipped while exporting), so a trace is exact, and `exports.exporter.verify` checks every graph at
batch sizes and text lengths other than the traced ones. The DeprecationWarning the legacy path raises is silenced
here only.

The bundle is built in a temporary sibling folder and moved into place at the end, so a failed export never
leaves a half-written bundle, and an existing bundle is replaced only by a complete one. Replacing one needs
`force=True` (`--force`), holds the bundle's writer lock (`exports.serving.manifest.bundle_lock`), and removes only
files the old manifest lists (files rebalance wrote): a bundle folder holding any other file is refused, so a
user's own files are never deleted.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import shutil
import warnings
from pathlib import Path

from exports.serving.manifest import FORMAT, MANIFEST, BundleError, bundle_lock, list_files, write_manifest
from rebalance_ref.files import read_json

EXPORTERS = ("torchscript", "dynamo")
DEFAULT_EXPORTER = "torchscript"
# ONNX opset of the graphs: 17 is the first with LayerNormalization; both exporters and onnxruntime >= 1.14 read it.
OPSET = 17
EXPORT_BATCH = 2
EXPORT_SEED = 0
# The code width a run's bundle gets by default, when the run has heads of that width (`run_code_bits`).
DEFAULT_CODE_BITS = 64

# name: (file, input names, output names). Inputs: images float32 (B, 3, S, S); ids, mask int64 (B, L).
GRAPHS = {
    "image_encoder": ("image_encoder.onnx", ("images",), ("v",)),
    "text_encoder": ("text_encoder.onnx", ("ids", "mask"), ("t",)),
    "fusion_itm": ("fusion_itm.onnx", ("images", "ids", "mask"), ("itm_logits",)),
}
# The code graphs (format version 2), from `rebalance_torch.hash_heads.CodeHeads`: embeddings float32 (B, D) ->
# h float32 (B, bits), the relaxed codes. One graph per modality, or one `codes` graph when the head is shared.
CODE_GRAPHS = {
    "codes_image": ("codes_image.onnx", ("embeddings",), ("h",)),
    "codes_text": ("codes_text.onnx", ("embeddings",), ("h",)),
    "codes": ("codes.onnx", ("embeddings",), ("h",)),
}
_DYNAMIC = {"images": {0: "batch"}, "ids": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"},
            "v": {0: "batch"}, "t": {0: "batch"}, "itm_logits": {0: "batch"}, "embeddings": {0: "batch"},
            "h": {0: "batch"}}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that write and read a bundle (None when missing)."""
    out: dict[str, str | None] = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "numpy"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def example_inputs(config, batch: int = EXPORT_BATCH, length: int | None = None, seed: int = EXPORT_SEED):
    """Seeded example tensors for tracing: images (B, 3, S, S) in [0, 1], ids and mask (B, L) with padding.

    Row 0 is a full-length text, the other rows are shorter (padded), so the traced graph sees real masking.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    length = min(config.max_len, 8) if length is None else length
    images = torch.rand(batch, 3, config.image_size, config.image_size, generator=generator)
    ids = torch.randint(3, config.vocab_size, (batch, length), generator=generator)
    ids[:, 0] = 1  # [CLS]
    lengths = torch.randint(2, length + 1, (batch,), generator=generator)
    lengths[0] = length
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(torch.int64)
    return images, ids * mask, mask


def _wrappers(student):
    from rebalance_torch.models import ImageEmbedder, PairScorer, TextEmbedder

    return {"image_encoder": ImageEmbedder(student), "text_encoder": TextEmbedder(student),
            "fusion_itm": PairScorer(student)}


def code_graph_names(heads) -> dict[str, str]:
    """{"image": graph name, "text": graph name} of a `CodeHeads`: one shared graph or one per modality."""
    return {"image": "codes", "text": "codes"} if heads.shared else {"image": "codes_image", "text": "codes_text"}


def _code_wrappers(heads) -> dict:
    """Graph name -> the head module it exports (`HashHead`: embeddings (B, D) -> h (B, bits))."""
    names = code_graph_names(heads)
    return {names[side]: heads.head(side) for side in ("image", "text")}


def _export_graph(module, args: tuple, path: Path, inputs: tuple[str, ...], outputs: tuple[str, ...],
                  exporter: str, opset: int) -> None:
    import torch

    names = inputs + outputs
    if exporter == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, args, str(path), dynamo=False, input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes={n: _DYNAMIC[n] for n in names},
                              opset_version=opset)
        return
    batch = torch.export.Dim("batch", min=1)
    shapes = {"images": {0: batch}, "embeddings": {0: batch}}
    if "ids" in inputs:
        length = torch.export.Dim("length", min=1, max=module.student.config.max_len)
        shapes.update(ids={0: batch, 1: length}, mask={0: batch, 1: length})
    program = torch.onnx.export(module, args, dynamo=True, input_names=list(inputs), output_names=list(outputs),
                                dynamic_shapes={n: shapes[n] for n in inputs}, opset_version=opset,
                                external_data=False, verbose=False)
    program.save(str(path), external_data=False)


def _prepare_target(bundle_dir: Path, force: bool) -> list[str]:
    """Check that `bundle_dir` may be written; returns the files of the bundle it replaces (empty if none).

    Refused: a file, a non-empty folder that is not a bundle, a bundle without `force`, and a bundle folder that
    holds files its manifest does not list (the user's: export never deletes them)."""
    if not bundle_dir.exists():
        return []
    if not bundle_dir.is_dir():
        raise ValueError(f"--out {bundle_dir} exists and is not a folder")
    if not any(bundle_dir.iterdir()):
        return []
    if not (bundle_dir / MANIFEST).is_file():
        raise ValueError(f"--out {bundle_dir} exists, is not empty and is not a bundle; choose another folder")
    manifest = read_json(bundle_dir / MANIFEST, error=BundleError)
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(manifest.get("files"),
                                                                                            dict):
        raise ValueError(f"--out {bundle_dir} holds a manifest.json of another kind; choose another folder")
    listed = [name for name in manifest["files"] if isinstance(name, str)]
    if not force:
        raise ValueError(f"--out {bundle_dir} already holds a bundle; pass --force (force=True) to replace it")
    others = sorted(set(list_files(bundle_dir)) - set(listed))
    if others:
        shown = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise ValueError(f"--out {bundle_dir} holds files the bundle does not list ({shown}); export removes only "
                         f"files it wrote: move them out of the folder first")
    return listed


def _move_into_place(tmp: Path, bundle_dir: Path, old_files: list[str]) -> None:
    """Swap the finished bundle in; of the old folder, delete only `old_files`, the manifest and emptied folders."""
    old = bundle_dir.with_name(f".{bundle_dir.name}.old-{os.getpid()}")
    if bundle_dir.exists():
        os.replace(bundle_dir, old)
    try:
        os.replace(tmp, bundle_dir)
    except OSError:
        if old.exists():
            os.replace(old, bundle_dir)
        raise
    if old.exists():
        for name in (*old_files, MANIFEST):
            (old / name).unlink(missing_ok=True)
        for folder in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
        if any(old.iterdir()):  # a file appeared after the check: keep it, and say where
            warnings.warn(f"kept files that appeared in {bundle_dir} during the export in {old}", stacklevel=3)
        else:
            old.rmdir()


def export_student(student, tokenizer, bundle_dir: str | Path, *, exporter: str = DEFAULT_EXPORTER,
                   opset: int = OPSET, fusion: bool = True, info: dict | None = None, force: bool = False,
                   codes=None) -> Path:
    """Write a bundle for `student` (a `rebalance_torch.models.Student`) and its `tokenizer` into `bundle_dir`.

    `info` is merged into the manifest (e.g. the run folder, stage and presets). `codes`: hash heads
    (`rebalance_torch.hash_heads.CodeHeads`) of the student's embedding width, exported as the code graphs with
    the manifest's `codes` section. An existing bundle is replaced only with `force` (see the module's doc for
    what is removed). Returns the bundle path.
    """
    import torch

    from rebalance_torch import input_checks

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < 17:
        raise ValueError(f"opset must be an int >= 17 (LayerNormalization), got {opset!r}")
    config = student.config
    if tokenizer.vocab_size != config.vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} words but the student expects {config.vocab_size}")
    if codes is not None and codes.dim != config.embed_dim:
        raise ValueError(f"the hash heads take embeddings of width {codes.dim} but the student's are "
                         f"{config.embed_dim} wide (heads trained on another run?)")
    bundle_dir = Path(bundle_dir)
    _prepare_target(bundle_dir, force)  # early, before the slow part; checked again under the lock
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = bundle_dir.with_name(f".{bundle_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    was_training = student.training
    student.eval()
    try:
        images, ids, mask = example_inputs(config)
        args = {"image_encoder": (images,), "text_encoder": (ids, mask), "fusion_itm": (images, ids, mask)}
        graphs = {}
        with torch.no_grad():
            for name, module in _wrappers(student).items():
                if name == "fusion_itm" and not fusion:
                    continue
                file, inputs, outputs = GRAPHS[name]
                _export_graph(module, args[name], tmp / file, inputs, outputs, exporter, opset)
                graphs[name] = {"file": file, "inputs": list(inputs), "outputs": list(outputs)}
            if codes is not None:
                codes.eval()
                generator = torch.Generator().manual_seed(EXPORT_SEED)
                embeddings = torch.nn.functional.normalize(torch.randn(EXPORT_BATCH, codes.dim, generator=generator))
                with input_checks.skipped():
                    for name, module in _code_wrappers(codes).items():
                        file, inputs, outputs = CODE_GRAPHS[name]
                        _export_graph(module, (embeddings,), tmp / file, inputs, outputs, exporter, opset)
                        graphs[name] = {"file": file, "inputs": list(inputs), "outputs": list(outputs)}
        tokenizer.save(tmp / "tokenizer.json")
        manifest = {
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": {"config": config.to_dict(), "embed_dim": config.embed_dim, "image_size": config.image_size,
                      "max_len": config.max_len, "vocab_size": config.vocab_size},
            "onnx": {"opset": opset, "exporter": exporter, "export_batch": EXPORT_BATCH, "graphs": graphs},
            "libraries": library_versions(),
            "gallery": None,
            **(info or {}),
        }
        if codes is not None:
            manifest["codes"] = {"bits": codes.bits, "graphs": code_graph_names(codes), "shared": codes.shared}
        write_manifest(tmp, manifest)  # hashes the files of our private temporary folder
        with bundle_lock(bundle_dir):
            _move_into_place(tmp, bundle_dir, _prepare_target(bundle_dir, force))
    finally:
        student.train(was_training)
        if tmp.exists():
            shutil.rmtree(tmp)
    return bundle_dir


def run_code_bits(run_dir: str | Path, code_bits: int | str | None = "auto") -> int | None:
    """The code width a run's bundle gets: "auto" takes 64 bits when the run has heads of that width, else its
    widest, and None when it has none; a number asks for that width (refused when not trained); None: no codes."""
    from rebalance_torch.hash_heads import trained_bits

    if code_bits is None:
        return None
    available = trained_bits(run_dir)
    if code_bits == "auto":
        return None if not available else (DEFAULT_CODE_BITS if DEFAULT_CODE_BITS in available else available[-1])
    if isinstance(code_bits, bool) or not isinstance(code_bits, int) or code_bits not in available:
        trained = ", ".join(map(str, available)) or "none"
        raise ValueError(f"run {run_dir} has no hash heads of {code_bits!r} bits (trained: {trained}); train them "
                         f"with `rebalance codes train --run {run_dir} --bits {code_bits}`")
    return code_bits


def export_bundle(run_dir: str | Path, bundle_dir: str | Path, *, which: str = "best",
                  exporter: str = DEFAULT_EXPORTER, opset: int = OPSET, force: bool = False,
                  code_bits: int | str | None = "auto") -> Path:
    """Export the student of a training run folder (checkpoint `which`) into `bundle_dir`; returns its path.

    When the run has trained hash heads (`rebalance codes train`), the code graphs of `run_code_bits(run_dir,
    code_bits)` bits go into the bundle too."""
    from rebalance_torch.checkpoint import load_student, resolve
    from rebalance_torch.hash_heads import heads_path, load_code_heads

    bits = run_code_bits(run_dir, code_bits)
    heads = None
    if bits is not None:
        heads, heads_info = load_code_heads(heads_path(run_dir, bits))
        if heads_info.get("which", which) != which:
            raise ValueError(f"the run's {bits}-bit hash heads were trained on checkpoint {heads_info['which']!r}, "
                             f"not {which!r}: export --which {heads_info['which']}, train the heads again with "
                             f"--which {which}, or export without codes (--no-codes)")
    student, train_config, tokenizer = load_student(run_dir, which=which)
    info = {"source": {"run_dir": str(Path(run_dir).resolve()), "which": which,
                       "checkpoint": resolve(run_dir, which).name},
            "presets": {"model": train_config.model, "data": train_config.preset,
                        "data_dir": train_config.data_dir},
            "k_test": train_config.k_test}
    return export_student(student, tokenizer, bundle_dir, exporter=exporter, opset=opset, info=info, force=force,
                          codes=heads)


def export_and_search(run_dir: str | Path, bundle_dir: str | Path, split, *, query: str | None = None, k: int = 5,
                      threads: int = 1, which: str = "best", force: bool = False, **search_options):
    """The end of `rebalance demo`: export the run's student, index `split` into the bundle, search it once.

    `split` is a `CaptionedImages` (the run's test split); `query` defaults to its first caption. The search runs
    through the torch-free runtime (by default over the images); `search_options` go to `Retriever.search` (e.g.
    `modality="all"`, `rerank=True`). Returns (retriever, query, hits): `retriever.bundle_dir` is the bundle,
    `exports.serving.runtime.format_hits(hits)` prints the hits and `retriever.hit_pixels(hit)` gives their images.
    """
    from exports.serving.runtime import Retriever, index_split

    bundle = export_bundle(run_dir, bundle_dir, which=which, force=force)
    retriever = Retriever.load(bundle, threads=threads)
    index_split(retriever, split)
    retriever.save_gallery()
    query = split.captions[0][0] if query is None else query
    return retriever, query, retriever.search_text(query, k=k, **search_options)
