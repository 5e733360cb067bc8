"""Fixtures shared by the training-step tests: a tiny student's sizes and one seeded text-poor batch."""

import pytest

from rebalance_ref.shapes import make_world
from rebalance_ref.tokenizer import Tokenizer
from rebalance_torch.data import Collate, PairDataset
from rebalance_torch.schedule import batch_rows

# A student small enough for a step in milliseconds.
SMALL_MODEL = {"vision_width": 32, "text_width": 32, "embed_dim": 16, "heads": 2, "vision_depth": 1,
               "text_depth": 1}


@pytest.fixture(scope="module")
def batch_and_tokenizer():
    """A collated batch of 8 caption rows of a 16-scene text-poor world, and its tokenizer."""
    world = make_world(16, "text-poor", seed=0)
    tokenizer = Tokenizer.build(world.pairs()[1], max_len=16)
    dataset = PairDataset(world, tokenizer)
    return Collate()([dataset[int(r)] for r in batch_rows(0, 2, 0, len(dataset), 8)]), tokenizer
