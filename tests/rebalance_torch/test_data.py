import numpy as np
import pytest
import torch

from rebalance_ref.images import to_model_input
from rebalance_ref.shapes import make_world
from rebalance_ref.text import words
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.data import (
    MILD,
    Augment,
    Batch,
    PairDataset,
    augment_images,
    image_batches,
    make_loader,
    text_batches,
)


@pytest.fixture(scope="module")
def world():
    return make_world(6, "balanced", seed=2)


@pytest.fixture(scope="module")
def tokenizer(world):
    return Tokenizer.build(world.pairs()[1], max_len=12)


def test_items_follow_pairs_order(world, tokenizer):
    ds = PairDataset(world, tokenizer)
    idx, flat = world.pairs()
    assert len(ds) == len(flat) == 30
    image, ids, mask, i, row = ds[7]
    assert (i, row) == (int(idx[7]), 7)
    torch.testing.assert_close(image, torch.from_numpy(to_model_input(world.images[i:i + 1])[0]), rtol=0, atol=0)
    expected_ids, _ = tokenizer.encode([flat[7]])
    assert ids.tolist() == expected_ids[0].tolist() and mask.sum() == len(ids)
    with pytest.raises(IndexError):
        ds[30]


def test_collate_pads_to_longest_in_batch_and_loader_is_seeded(world, tokenizer):
    batches = list(make_loader(world, tokenizer, batch_size=8, seed=3))
    assert sum(len(b.row_idx) for b in batches) == 30
    b = batches[0]
    assert isinstance(b, Batch) and b.images.shape == (8, 3, 32, 32) and b.images.dtype == torch.float32
    assert b.ids.dtype == torch.int64 and b.mask.dtype == torch.int64
    lengths = b.mask.sum(1)
    assert b.ids.shape[1] == int(lengths.max()) <= 12
    assert torch.all(b.ids[b.mask == 0] == 0) and torch.all(b.ids[:, 0] == tokenizer.cls_id)
    idx, _ = world.pairs()
    assert b.image_idx.tolist() == idx[b.row_idx.numpy()].tolist()
    again = list(make_loader(world, tokenizer, batch_size=8, seed=3))
    assert all(torch.equal(x.row_idx, y.row_idx) for x, y in zip(batches, again, strict=True))
    other = list(make_loader(world, tokenizer, batch_size=8, seed=4))
    assert not all(torch.equal(x.row_idx, y.row_idx) for x, y in zip(batches, other, strict=True))
    ordered = next(iter(make_loader(world, tokenizer, batch_size=5, shuffle=False)))
    assert ordered.row_idx.tolist() == [0, 1, 2, 3, 4]


def test_augmentation_off_by_default_and_seeded_when_on(world, tokenizer):
    plain = next(iter(make_loader(world, tokenizer, batch_size=30, shuffle=False)))
    torch.testing.assert_close(plain.images, torch.from_numpy(to_model_input(world.images[world.pairs()[0]])))
    aug1 = next(iter(make_loader(world, tokenizer, batch_size=30, shuffle=False, augment=MILD, seed=1)))
    aug2 = next(iter(make_loader(world, tokenizer, batch_size=30, shuffle=False, augment=MILD, seed=1)))
    torch.testing.assert_close(aug1.images, aug2.images)
    assert not torch.equal(aug1.images, plain.images)
    assert aug1.images.min() >= 0 and aug1.images.max() <= 1
    assert (aug1.images - plain.images).abs().mean() < 0.1  # mild


def test_shift_moves_by_at_most_the_limit_and_never_wraps():
    image = torch.zeros((1, 3, 8, 8))
    image[0, :, 1, 6] = 1.0  # a bright pixel near the top-right corner
    seen = set()
    for seed in range(12):
        out = augment_images(image, Augment(shift=2), torch.Generator().manual_seed(seed))
        for y, x in torch.nonzero(out[0, 0]).tolist():
            assert abs(y - 1) <= 2 and abs(x - 6) <= 2  # moved by at most 2 px, never wrapped to the far side
            seen.add((y, x))
    assert len(seen) > 1  # it does move


def test_bad_arguments(world, tokenizer):
    with pytest.raises(ValueError, match="shift"):
        Augment(shift=3)
    with pytest.raises(ValueError, match="noise"):
        Augment(noise=-0.1)
    with pytest.raises(ValueError, match="tokenizer"):
        make_loader(world, None)
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(world, tokenizer, batch_size=0)
    with pytest.raises(ValueError, match="data"):
        PairDataset(world.images, tokenizer)


def test_encoding_helpers_cover_everything_in_order(world, tokenizer):
    images = torch.cat(list(image_batches(world, batch_size=4)))
    np.testing.assert_array_equal(images.numpy(), to_model_input(world.images))
    flat = world.pairs()[1]
    chunks = list(text_batches(flat, tokenizer, batch_size=7))
    assert sum(len(ids) for ids, _ in chunks) == len(flat)
    assert tokenizer.decode(chunks[1][0][0].numpy()) == " ".join(words(flat[7])[:11])  # max_len 12 with [CLS]
