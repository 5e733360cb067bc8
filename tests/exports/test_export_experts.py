"""A student with LIMoE experts exports and verifies like any other: at evaluation every token reaches its top-k
experts (no capacity), so the graphs hold no batch-dependent routing."""

from exports.exporter.export import export_student
from exports.exporter.verify import verify_bundle
from tests.exports.conftest import MAX_LEN


def test_a_mixture_of_experts_student_exports_and_verifies(world, tmp_path):
    from rebalance_ref.tokenizer import Tokenizer
    from rebalance_torch.models import ModelConfig, Student

    tokenizer = Tokenizer.build([c for caps in world.captions for c in caps], max_len=MAX_LEN)
    config = ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_len=MAX_LEN,
                                moe={"experts": 4, "top_k": 2})
    student = Student(config, seed=0).eval()
    bundle = export_student(student, tokenizer, tmp_path / "bundle", fusion=False)
    report = verify_bundle(bundle, student, tokenizer, world)
    assert report.ok, report.table()
