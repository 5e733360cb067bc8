"""rebalance: structure-aware distillation for vision-language retrieval, CPU-first.

The application package: the `rebalance` command line (`rebalance.cli`), the demo, the ablation, reports, plots
and benchmarks, built on three libraries below it — `rebalance_ref` (NumPy formulas, metrics, data),
`rebalance_torch` (the trainer) and `exports` (ONNX export and the torch-free retriever).

Importing `rebalance` stays light: no torch, no onnxruntime until a name that needs it is used.

    import rebalance
    retriever = rebalance.load("runs/demo/bundle")     # a bundle, served with NumPy + onnxruntime only
    hits = retriever.search_text("a red circle", k=5, modality="image")
"""

from __future__ import annotations

__all__ = ["load", "Retriever"]


def load(bundle_dir, *, threads: int = 1, **options):
    """Open an exported bundle for search (`exports.serving.runtime.Retriever.load`); torch is not needed."""
    from exports.serving.runtime import Retriever

    return Retriever.load(bundle_dir, threads=threads, **options)


def __getattr__(name: str):
    if name == "Retriever":  # imported on first use, so that `import rebalance` does not load onnxruntime
        from exports.serving.runtime import Retriever

        return Retriever
    raise AttributeError(f"module 'rebalance' has no attribute {name!r}")
