import numpy as np
import pytest

from rebalance_ref import gcl as ref
from rebalance_torch import gcl
from tests.rebalance_ref.test_gcl import BATCHES, gcl_inputs
from tests.rebalance_torch.test_relations import assert_gradcheck, assert_parity, assert_same_error


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("repeated", [False, True])
@pytest.mark.parametrize("pairs", sorted(ref.GCL_PAIRS))
def test_gcl_parity(batch, repeated, pairs):
    inputs = gcl_inputs(batch, repeated, seed=batch, pairs=pairs)
    assert assert_parity(ref.gcl, gcl.gcl, inputs, seed=batch) == {"image", "text", "tau"}


def test_fuse_parity_and_gradcheck():
    inputs = {k: v for k, v in gcl_inputs(5, False, seed=2).items() if k in ("image", "text")}
    assert assert_parity(ref.fuse, gcl.fuse, inputs) == {"image", "text"}
    assert_gradcheck(gcl.gcl, gcl_inputs(3, True, seed=3), ["image", "text", "tau"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({**gcl_inputs(3, False), "pairs": "some"}, "pairs: expected one of all, cross"),
    ({**gcl_inputs(3, False), "text": np.ones((2, 5))}, "image and text: expected the same batch size"),
    ({**gcl_inputs(3, False), "tau": 0.0}, "tau: expected a positive scalar"),
])
def test_bad_input_same_message_as_reference(kwargs, message):
    assert_same_error(ref, gcl, "gcl", kwargs, message)
