"""The layer contract: layers only point down, no module imports another in a circle, and the light entry points
stay light.

    rebalance_ref      NumPy (+SciPy): imports no other layer, never torch or onnxruntime
    rebalance_torch    the torch library: imports rebalance_ref only
    exports.serving    the retriever: rebalance_ref and onnxruntime, never torch, never the exporter
    exports.exporter   ONNX export and verification: rebalance_ref, rebalance_torch, exports.serving
    rebalance          the application (CLI, demo, ablation, reports, plots, benchmarks): anything below

Every import counts, at the top of a module or inside a function ("lazy"): a lazy import of a layer above is still
a dependency on it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rebalance_ref", "rebalance_torch", "exports", "rebalance")
# layer -> the layers (and third-party top-level packages) it must never import
FORBIDDEN = {
    "rebalance_ref": ("rebalance_torch", "exports", "rebalance", "torch", "onnxruntime", "onnx"),
    "rebalance_torch": ("exports", "rebalance"),
    "exports.serving": ("exports.exporter", "rebalance_torch", "rebalance", "torch", "onnx"),
    "exports.exporter": ("rebalance",),
    "rebalance": (),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module `path` imports (ours resolved to the module, others to their top-level package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in MODULES else node.module)
    return found


def _layer(module: str) -> str:
    for layer in ("exports.serving", "exports.exporter"):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module.split(".")[0]


def _within(module: str, target: str) -> bool:
    return module == target or module.startswith(target + ".")


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def test_every_module_belongs_to_a_known_layer():
    assert {_layer(m) for m in MODULES} <= set(FORBIDDEN) | {"exports"}
    assert "rebalance_torch.trainer" in MODULES and "exports.serving.runtime" in MODULES


@pytest.mark.parametrize("module", sorted(MODULES))
def test_layers_only_point_down(module):
    layer = _layer(module)
    bad = sorted(m for m in _imports(MODULES[module]) for f in FORBIDDEN.get(layer, ()) if _within(m, f))
    assert not bad, f"{module} (layer {layer}) imports {bad}"


def test_no_module_imports_another_in_a_circle():
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_contract_sees_a_violation():
    """The checker itself: a lazy import of the CLI inside rebalance_torch, or a cycle, is caught."""
    source = "def f():\n    from rebalance.cli.options import set_threads\n"
    tree_imports = {n.module for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom)}
    assert any(_within(m, f) for m in tree_imports for f in FORBIDDEN["rebalance_torch"])
    assert _layer("exports.serving.runtime") == "exports.serving" and _layer("rebalance.cli.main") == "rebalance"


@pytest.mark.parametrize("statement", ["import rebalance", "import rebalance_ref, rebalance_ref.threads",
                                       "import exports.serving.runtime"])
def test_light_entry_points_do_not_load_torch(statement):
    code = f"import sys\n{statement}\nassert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_import_rebalance_does_not_load_onnxruntime_until_asked():
    code = ("import sys, rebalance\nassert 'onnxruntime' not in sys.modules\n"
            "rebalance.Retriever\nassert 'onnxruntime' in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
