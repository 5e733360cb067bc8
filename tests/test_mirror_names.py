"""The mirror rule (docs/design.md §5): every formula in rebalance_ref/X.py exists in rebalance_torch/X.py under the
same name with the same arguments in the same order. The NumPy side alone has the keyword-only `grad_out` (the
upstream gradient of an array value), which autograd makes unnecessary in torch."""

import importlib
import inspect

import pytest

MIRRORED = ("relations", "distances", "losses", "momentum", "experts", "gcl", "mixup", "sae", "hashing")
NUMPY_ONLY_KEYWORDS = {"grad_out"}


def public_functions(module):
    """Names of the functions a module defines itself and does not mark private."""
    return {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(obj) and obj.__module__ == module.__name__
    }


def arguments(fn, drop=frozenset()):
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values() if p.name not in drop]


@pytest.mark.parametrize("name", MIRRORED)
def test_public_names_match(name):
    ref = importlib.import_module(f"rebalance_ref.{name}")
    mirror = importlib.import_module(f"rebalance_torch.{name}")
    assert ref.__all__ == mirror.__all__
    assert public_functions(ref) == set(ref.__all__)
    assert public_functions(mirror) == set(mirror.__all__)


@pytest.mark.parametrize("name", MIRRORED)
def test_signatures_match(name):
    ref = importlib.import_module(f"rebalance_ref.{name}")
    mirror = importlib.import_module(f"rebalance_torch.{name}")
    for function in ref.__all__:
        ref_fn, torch_fn = getattr(ref, function), getattr(mirror, function)
        assert arguments(ref_fn, NUMPY_ONLY_KEYWORDS) == arguments(torch_fn), function
        numpy_only = [p for p in inspect.signature(ref_fn).parameters.values() if p.name in NUMPY_ONLY_KEYWORDS]
        assert all(p.kind is p.KEYWORD_ONLY for p in numpy_only), function
