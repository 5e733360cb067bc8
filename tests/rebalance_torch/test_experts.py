"""The experts' mirror (parity with the reference in float64, gradcheck, the same errors) and the MoE layer:
capacity, batch-priority routing, dropped tokens passing by the residual, the option's hook and checks."""

import math

import numpy as np
import pytest
import torch

from rebalance_ref import experts as ref
from rebalance_torch import experts, moe
from rebalance_torch.models import ModelConfig, Student
from tests.rebalance_ref.test_experts import TOKENS, entropy, router_logits
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error


@pytest.mark.parametrize("tokens", TOKENS)
def test_parity(tokens):
    z = router_logits(tokens, seed=tokens)
    assert assert_parity(ref.local_entropy, experts.local_entropy, {"logits": z}) == {"logits"}
    p_bar = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).mean(axis=0)
    for threshold in (entropy(p_bar) + 0.3, entropy(p_bar) - 0.3):  # active and inactive hinge
        inputs = {"logits": z, "threshold": threshold}
        assert assert_parity(ref.global_entropy, experts.global_entropy, inputs) == {"logits"}


def test_gradcheck_and_errors():
    z = router_logits(7, seed=3, spread=4.0)
    assert_gradcheck(experts.local_entropy, {"logits": z}, ["logits"])
    assert_gradcheck(experts.global_entropy, {"logits": z, "threshold": math.log(5) - 0.01}, ["logits"])
    assert_same_error(ref, experts, "local_entropy", {"logits": np.zeros((3, 1))}, "logits: expected E >= 2")
    assert_same_error(ref, experts, "global_entropy", {"logits": np.zeros((3, 4)), "threshold": -1.0},
                      "threshold: expected an entropy >= 0")


def test_capacity_rule():
    assert moe.capacity(1024, 8, 1, 1.0) == 128
    assert moe.capacity(10, 8, 1, 1.0) == 4  # ceil(10/8) = 2, rounded up to a multiple of 4
    assert moe.capacity(100, 8, 2, 1.0) == 28  # ceil(25) = 25 -> 28


def _layer(capacity_factor, experts_n=2):
    torch.manual_seed(0)
    return moe.MoE(4, 8, experts_n, 1, capacity_factor).double()


def test_training_routing_matches_a_loop_over_the_definition():
    """Batch-priority routing against a Python loop: tokens in order of their largest gate take slots while their
    expert has room; a dropped token outputs exactly 0 (the block adds only the residual)."""
    layer = _layer(capacity_factor=0.5)  # C = 4 * ceil(ceil(12 * 0.5 / 2) / 4) = 4 slots per expert
    x = torch.randn(12, 4, dtype=torch.float64)
    layer.train()
    torch.manual_seed(5)
    out = layer(x, "image")
    torch.manual_seed(5)
    logits = layer.router(x) + torch.randn(12, 2, dtype=torch.float64) / 2
    p = torch.softmax(logits, dim=1)
    gate, choice = p.max(dim=1)
    taken = {0: 0, 1: 0}
    expected = torch.zeros_like(x)
    dropped = 0
    for i in sorted(range(12), key=lambda i: -float(gate[i].detach())):
        e = int(choice[i])
        if taken[e] < 4:
            taken[e] += 1
            hidden = torch.nn.functional.gelu(x[i] @ layer.fc_in.weight[e] + layer.fc_in.bias[e])
            expected[i] = gate[i] * (hidden @ layer.fc_out.weight[e] + layer.fc_out.bias[e])
        else:
            dropped += 1
    assert dropped > 0  # the case under test happens
    torch.testing.assert_close(out, expected)
    assert sum(bool(torch.all(row == 0)) for row in out) == dropped
    assert len(layer.records) == 1 and layer.records[0]["logits"].shape == (12, 2)


def test_evaluation_keeps_every_token_and_equals_ample_capacity():
    layer = _layer(capacity_factor=0.5)
    x = torch.randn(12, 4, dtype=torch.float64)
    layer.eval()
    evaluated = layer(x, "text")
    gate, choice = torch.softmax(layer.router(x), dim=1).max(dim=1)
    routed = layer._routed(x, gate[:, None], choice[:, None])  # same gates, capacity 0.5 -> some dropped
    ample = moe.MoE(4, 8, 2, 1, 8.0).double()
    ample.load_state_dict(layer.state_dict())
    torch.testing.assert_close(evaluated, ample._routed(x, gate[:, None], choice[:, None]))
    assert not torch.allclose(evaluated, routed)


def test_hook_keeps_every_other_weight_and_checks_the_option():
    cfg = ModelConfig(vocab_size=20, moe={"experts": 4})
    assert cfg.moe == {"layers": [1], "experts": 4, "top_k": 1, "capacity": 1.0, "shared": True}
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    moe_student, dense = Student(cfg, seed=0), Student(ModelConfig(vocab_size=20), seed=0)
    dense_state = dense.state_dict()
    shared = [k for k in moe_student.state_dict() if k in dense_state]
    assert len(shared) == len(dense_state) - 8  # both towers' block-1 MLP (two linears each) replaced
    assert all(torch.equal(moe_student.state_dict()[k], dense_state[k]) for k in shared)
    # shared: one router, one set of experts
    assert moe_student.image_encoder.blocks[1].mlp.moe is moe_student.text_encoder.blocks[1].mlp.moe
    for bad, message in (({"layers": [2]}, r"moe\['layers'\] must be distinct block indices in \[0, 2\)"),
                         ({"experts": 1}, r"moe\['experts'\] must be an integer in \[2, 256\]"),
                         ({"top_k": 3, "experts": 2}, r"moe\['top_k'\]"), ({"colour": 1}, "unknown key"),
                         ({"shared": 1}, "shared'] must be true or false")):
        with pytest.raises(ValueError, match=message):
            ModelConfig(moe=bad)
    with pytest.raises(ValueError, match="needs vision_width == text_width"):
        ModelConfig(text_width=32, moe={"experts": 4})


def test_auxiliary_terms_and_routing_counts():
    student = Student(ModelConfig(vocab_size=20, moe={"experts": 4, "layers": [0, 1], "shared": False}), seed=0)
    images, ids = torch.rand(3, 3, 32, 32), torch.randint(3, 20, (3, 6))
    mask = torch.ones_like(ids)
    mask[:, 4:] = 0
    student.train()
    student.embed_image(images), student.embed_text(ids, mask)
    names = ("moe_importance", "moe_load", "moe_local", "moe_global")
    terms = moe.auxiliary_terms(student, dict.fromkeys(names, 1.0), 2.0)
    assert set(terms) == set(names) and all(bool(torch.isfinite(v)) for v in terms.values())
    assert 0 <= float(terms["moe_local"].detach()) <= math.log(4)
    assert all(not layer.records for layer in moe.moe_layers(student))  # emptied
    counts = moe.routing_counts(student, images, ids, mask)
    assert len(counts) == 4  # two layers per tower, unshared
    assert student.training  # restored
    per_tower = sorted((int(c["image"].sum()), int(c["text"].sum())) for c in counts)
    assert per_tower == [(0, 12), (0, 12), (48, 0), (48, 0)]  # 3 x 16 patches; 3 x 4 real tokens (no padding)
