"""A tiny seeded student, its tokenizer, a small shapes-world split and one exported bundle, shared by the
export tests (exporting takes a few seconds, so it happens once per session)."""

import shutil

import pytest

MAX_LEN = 16
# The start of a script run in a subprocess where `import torch` fails: the torch-free side must not need it.
BLOCK_TORCH = """import importlib.abc, json, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")

sys.meta_path.insert(0, NoTorch())
sys.modules.pop("torch", None)
"""


@pytest.fixture(scope="session")
def world():
    from rebalance_ref.shapes import make_world

    return make_world(24, "text-poor", seed=0, size=32)


@pytest.fixture(scope="session")
def student_and_tokenizer(world):
    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch.models import ModelConfig, Student

    tokenizer = Tokenizer.build([c for caps in world.captions for c in caps], max_len=MAX_LEN)
    student = Student(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_len=MAX_LEN), seed=0)
    return student.eval(), tokenizer


@pytest.fixture(scope="session")
def exported(tmp_path_factory, student_and_tokenizer):
    """Path of a pristine bundle; tests that change a bundle work on a copy (`bundle`)."""
    from exports.exporter.export import export_student

    student, tokenizer = student_and_tokenizer
    return export_student(student, tokenizer, tmp_path_factory.mktemp("export") / "bundle",
                          info={"k_test": 4})


@pytest.fixture
def bundle(exported, tmp_path):
    """A fresh copy of the exported bundle for one test."""
    return shutil.copytree(exported, tmp_path / "bundle")
