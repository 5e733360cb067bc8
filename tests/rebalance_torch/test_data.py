import numpy as np
import pytest
import torch

from rebalance_ref.images import to_model_input
from rebalance_ref.shapes import make_world
from rebalance_ref.text import words
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.data import MILD, Augment, Batch, Collate, PairDataset, augment_images, image_batches, text_batches
from rebalance_torch.schedule import batch_rows


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


def _collate(world, tokenizer, rows, augment=None):
    dataset = PairDataset(world, tokenizer)
    return Collate(augment)([dataset[int(r)] for r in rows])


def test_collate_pads_to_longest_in_batch_and_batch_rows_are_seeded(world, tokenizer):
    rows = batch_rows(3, 1, 0, 30, 8)
    b = _collate(world, tokenizer, rows)
    assert isinstance(b, Batch) and b.images.shape == (8, 3, 32, 32) and b.images.dtype == torch.float32
    assert b.ids.dtype == torch.int64 and b.mask.dtype == torch.int64
    lengths = b.mask.sum(1)
    assert b.ids.shape[1] == int(lengths.max()) <= 12
    assert torch.all(b.ids[b.mask == 0] == 0) and torch.all(b.ids[:, 0] == tokenizer.cls_id)
    idx, _ = world.pairs()
    assert b.image_idx.tolist() == idx[b.row_idx.numpy()].tolist() and b.row_idx.tolist() == rows.tolist()
    epoch = torch.cat([batch_rows(3, 1, step, 30, 8) for step in range(3)])  # 3 full batches of 30 rows
    assert len(set(epoch.tolist())) == 24  # an epoch walks a permutation: no row twice
    assert torch.equal(batch_rows(3, 1, 0, 30, 8), rows) and not torch.equal(batch_rows(4, 1, 0, 30, 8), rows)


def test_augmentation_off_by_default_and_seeded_when_on(world, tokenizer):
    every = torch.arange(30)
    plain = _collate(world, tokenizer, every)
    torch.testing.assert_close(plain.images, torch.from_numpy(to_model_input(world.images[world.pairs()[0]])))
    torch.manual_seed(1)
    aug1 = _collate(world, tokenizer, every, MILD)
    torch.manual_seed(1)
    aug2 = _collate(world, tokenizer, every, MILD)
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
        PairDataset(world, None)
    with pytest.raises(ValueError, match="data"):
        PairDataset(world.images, tokenizer)


def test_encoding_helpers_cover_everything_in_order(world, tokenizer):
    images = torch.cat(list(image_batches(world, batch_size=4)))
    np.testing.assert_array_equal(images.numpy(), to_model_input(world.images))
    flat = world.pairs()[1]
    chunks = list(text_batches(flat, tokenizer, batch_size=7))
    assert sum(len(ids) for ids, _ in chunks) == len(flat)
    assert tokenizer.decode(chunks[1][0][0].numpy()) == " ".join(words(flat[7])[:11])  # max_len 12 with [CLS]
