import numpy as np
import pytest
import torch

from rebalance_ref.shapes import make_world
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.coalitions import PairGame, image_tokens_with_patches, stem_tokens
from rebalance_torch.data import image_batches
from rebalance_torch.models import ModelConfig, Student


@pytest.fixture(scope="module")
def setup():
    world = make_world(4, "text-poor", seed=1)
    tokenizer = Tokenizer.build([c for caps in world.captions for c in caps], max_len=16)
    student = Student(ModelConfig.preset("tiny", vocab_size=tokenizer.vocab_size, max_len=16), seed=3).eval()
    images = next(iter(image_batches(world, 4)))
    ids, mask = tokenizer.encode([world.captions[0][0]])
    return student, images, torch.as_tensor(ids[0]), torch.as_tensor(mask[0])


def test_all_patches_present_is_the_image_encoder(setup):
    student, images, _, _ = setup
    present = torch.ones(4, student.config.num_patches, dtype=torch.bool)
    with torch.no_grad():
        ours = image_tokens_with_patches(student, images, present, torch.zeros(student.config.vision_width))
        theirs = student.image_encoder(images)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_absent_patches_take_the_fill_token_only_there(setup):
    student, images, _, _ = setup
    fill = torch.full((student.config.vision_width,), 0.25)
    present = torch.ones(1, student.config.num_patches, dtype=torch.bool)
    present[0, 3] = False
    with torch.no_grad():
        changed = image_tokens_with_patches(student, images[:1], present, fill)
        original = student.image_encoder(images[:1])
        assert not torch.allclose(changed, original)
        # the same result as an image whose patch 3 already has the fill token after the stem
        stem = stem_tokens(student, images[:1])
        stem[0, 3] = fill
        x = stem + student.image_encoder.pos
        for block in student.image_encoder.blocks:
            x = block(x)
        x = student.image_encoder.norm(x)
    torch.testing.assert_close(changed[:, 1:], x)


@pytest.mark.parametrize("reward", ["cosine", "itm"])
def test_full_coalition_is_the_students_own_score(setup, reward):
    student, images, ids, mask = setup
    game = PairGame(student, images[0], ids, mask, torch.zeros(student.config.vision_width), reward=reward)
    assert game.n_players == int(mask.sum()) - 1 + student.config.num_patches
    value = game(np.ones((2, game.n_players), dtype=bool))
    with torch.no_grad():
        if reward == "cosine":
            expected = (student.embed_image(images[:1]) * student.embed_text(ids[None], mask[None])).sum()
        else:
            tokens, _ = student.encode_image(images[:1])
            text, _ = student.encode_text(ids[None], mask[None])
            expected = student.itm_logits(text, mask[None], tokens)[0, 1]
    np.testing.assert_allclose(value, float(expected), rtol=1e-5)


def test_absent_words_are_masked_out(setup):
    student, images, ids, mask = setup
    game = PairGame(student, images[0], ids, mask, torch.zeros(student.config.vision_width))
    none = np.zeros((1, game.n_players), dtype=bool)
    none[0, game.n_words:] = True  # every patch, no word: [CLS] alone
    with torch.no_grad():
        cls_only = student.embed_text(ids[None, :1], mask[None, :1])
        expected = (student.embed_image(images[:1]) * cls_only).sum()
    np.testing.assert_allclose(game(none), float(expected), rtol=1e-5)


def test_bad_coalitions_and_reward_are_named(setup):
    student, images, ids, mask = setup
    with pytest.raises(ValueError, match="reward: expected one of cosine, itm"):
        PairGame(student, images[0], ids, mask, torch.zeros(64), reward="dot")
    game = PairGame(student, images[0], ids, mask, torch.zeros(64))
    with pytest.raises(ValueError, match="coalitions: expected shape"):
        game(np.ones((2, 3), dtype=bool))
