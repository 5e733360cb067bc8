import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

from rebalance_torch.models import (
    ImageEmbedder,
    ModelConfig,
    PairScorer,
    Student,
    TextEmbedder,
    count_parameters,
    parameter_report,
)

VOCAB = 40


@pytest.fixture(scope="module")
def cfg():
    return ModelConfig.preset("tiny", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def student(cfg):
    return Student(cfg, seed=0).eval()


def batch(cfg, b, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.randint(3, VOCAB, (b, length), generator=g)
    ids[:, 0] = 1  # [CLS]
    mask = torch.ones(b, length, dtype=torch.int64)
    return images, ids, mask


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("length", [5, 12])
def test_every_output_has_the_documented_shape(cfg, student, b, length):
    images, ids, mask = batch(cfg, b, length)
    p, wv, wt, d = cfg.num_patches, cfg.vision_width, cfg.text_width, cfg.embed_dim
    with torch.no_grad():
        image_tokens, h_v = student.encode_image(images)
        text_tokens, h_t = student.encode_text(ids, mask)
        assert image_tokens.shape == (b, 1 + p, wv) and h_v.shape == (b, wv)
        assert text_tokens.shape == (b, length, wt) and h_t.shape == (b, wt)
        assert torch.equal(h_v, image_tokens[:, 0]) and torch.equal(h_t, text_tokens[:, 0])
        # the pooled image token is the mean of the patch tokens, as the official Swin's avgpool token
        torch.testing.assert_close(h_v, image_tokens[:, 1:].mean(dim=1))
        v, t = student.embed_image(images), student.embed_text(ids, mask)
        assert v.shape == (b, d) and t.shape == (b, d)
        torch.testing.assert_close(v.norm(dim=1), torch.ones(b))
        torch.testing.assert_close(t.norm(dim=1), torch.ones(b))
        fused = student.fuse(text_tokens, mask, image_tokens)
        assert fused.shape == (b, length, wt)
        assert student.itm_logits(text_tokens, mask, image_tokens).shape == (b, 2)
        out = student(images, ids, mask)
        assert {k: tuple(x.shape) for k, x in out.items()} == {
            "v": (b, d), "t": (b, d), "z": (b, wt), "itm": (b, 2), "image_tokens": (b, 1 + p, wv),
            "text_tokens": (b, length, wt)}
        torch.testing.assert_close(ImageEmbedder(student)(images), v)
        torch.testing.assert_close(TextEmbedder(student)(ids, mask), t)
        torch.testing.assert_close(PairScorer(student)(images, ids, mask), out["itm"])
        assert all(x.dtype == torch.float32 for x in out.values())


def test_padding_changes_neither_the_text_embedding_nor_the_fused_cls(cfg, student):
    images, ids, mask = batch(cfg, 3, 6)
    junk = torch.randint(3, VOCAB, (3, 7), generator=torch.Generator().manual_seed(5))  # not even [PAD] ids
    ids_padded = torch.cat([ids, junk], dim=1)
    mask_padded = torch.cat([mask, torch.zeros(3, 7, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        t, t_padded = student.embed_text(ids, mask), student.embed_text(ids_padded, mask_padded)
        z = student(images, ids, mask)["z"]
        z_padded = student(images, ids_padded, mask_padded)["z"]
        # and the mask is really used: the same ids unmasked give another embedding
        t_unmasked = student.embed_text(ids_padded, torch.ones_like(mask_padded))
    torch.testing.assert_close(t_padded, t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_padded, z, atol=1e-5, rtol=1e-5)
    assert (t_unmasked - t).abs().max() > 1e-3


def test_same_seed_same_weights_other_seed_other_weights_global_rng_untouched(cfg):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = Student(cfg, seed=7)
    after = torch.rand(3)
    assert torch.equal(before, after), "building a student must not consume the global RNG"
    b, c = Student(cfg, seed=7), Student(cfg, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    images, ids, mask = batch(cfg, 2, 5)
    with torch.no_grad():
        torch.testing.assert_close(a(images, ids, mask)["itm"], b(images, ids, mask)["itm"], rtol=0, atol=0)


def test_a_few_steps_lower_a_contrastive_plus_matching_loss(cfg):
    model = Student(cfg, seed=1)
    images, ids, mask = batch(cfg, 8, 6, seed=2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    target = torch.arange(8)

    def loss_fn():
        out = model(images, ids, mask)
        logits = out["v"] @ out["t"].T / model.temp
        itc = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        negative = model.itm_logits(out["text_tokens"], mask, out["image_tokens"].roll(1, dims=0))
        itm = F.cross_entropy(torch.cat([out["itm"], negative]), torch.cat([torch.ones(8), torch.zeros(8)]).long())
        return itc + itm

    first = loss_fn().item()
    for _ in range(25):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    last = loss_fn().item()
    assert last < 0.7 * first
    assert model.temp.grad is not None, "tau is learnable"


def test_config_json_round_trip_presets_and_overrides():
    for name in ("tiny", "small"):
        cfg = ModelConfig.preset(name)
        again = ModelConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(cfg))))
        assert again == cfg
    assert ModelConfig.preset("tiny", embed_dim=32).embed_dim == 32
    assert ModelConfig.preset("small").image_size == 64


@pytest.mark.parametrize(("field", "value"), [
    ("vision_width", 63), ("heads", 0), ("image_size", 30), ("patch_size", 6), ("vocab_size", 2), ("max_len", 1),
    ("dropout", 1.0), ("temp_init", 0.0), ("pixel_std", (1.0, 0.0, 1.0)), ("pixel_mean", (0.5, 0.5)),
    ("embed_dim", 2.5), ("text_depth", -1), ("stem_width", -1), ("stem_norm", "batch"), ("init", "xavier"),
])
def test_bad_config_values_raise_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        ModelConfig.preset("tiny", **{field: value})


def test_unknown_preset_and_unknown_field_raise():
    with pytest.raises(ValueError, match="huge"):
        ModelConfig.preset("huge")
    with pytest.raises(ValueError, match="colour"):
        ModelConfig.from_dict({"colour": 3})


def test_bad_inputs_raise_clear_errors(cfg, student):
    images, ids, mask = batch(cfg, 2, 5)
    with pytest.raises(ValueError, match="images"):
        student.encode_image(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="floating point"):
        student.encode_image((images * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="mask"):
        student.encode_text(ids, mask[:, :4])
    with pytest.raises(ValueError, match="ids"):
        student.encode_text(ids.float(), mask)
    with pytest.raises(ValueError, match="max_len"):
        long = torch.ones(1, cfg.max_len + 1, dtype=torch.int64)
        student.encode_text(long, long)
    with pytest.raises(ValueError, match="same"):
        student.fuse(torch.zeros(2, 5, cfg.text_width), mask, torch.zeros(3, 1 + cfg.num_patches, cfg.vision_width))


def test_parameter_counts_add_up_and_tiny_stays_small(cfg, student):
    report = parameter_report(student)
    assert report["total"] == count_parameters(student)
    assert sum(v for k, v in report.items() if k != "total") == report["total"]
    assert report["total"] < 1_000_000
    assert count_parameters(Student(ModelConfig.preset("small"))) > report["total"]


def test_stem_and_init_options_build_the_documented_student():
    old = Student(ModelConfig.preset("tiny", stem_width=0, stem_norm="none", init="trunc_normal"), seed=0)
    new = Student(ModelConfig.preset("tiny", stem_width=16, stem_norm="group"), seed=0)
    convs = [m for m in new.image_encoder.stem if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].stride == (1, 1) and convs[0].out_channels == new.config.stem_width
    assert [c.stride for c in convs[1:]] == [(2, 2)] * 3
    assert any(isinstance(m, torch.nn.GroupNorm) for m in new.image_encoder.stem)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in old.image_encoder.stem)
    # fan-in init keeps a Linear's output at the scale of its input; std 0.02 shrinks it at width 64
    w_new, w_old = new.fusion.blocks[0].cross_attn.v.weight.detach(), old.fusion.blocks[0].cross_attn.v.weight.detach()
    assert 0.8 < float(w_new.std()) * w_new.shape[1] ** 0.5 < 1.2
    assert float(w_old.std()) < 0.03
    # an image's embedding does not depend on the rest of its batch (no batch statistics anywhere)
    new.train()
    images = torch.rand(4, 3, 32, 32)
    assert torch.allclose(new.embed_image(images)[:1], new.embed_image(images[:1]), atol=1e-5)
