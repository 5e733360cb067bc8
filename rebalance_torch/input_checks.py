"""The switch for the input checks of the torch losses.

The public losses (`rebalance_torch.losses`) check their inputs as the NumPy reference does: shapes, finiteness,
positive temperatures, integer ids. A finiteness check reads a tensor's values on the host, which on a GPU waits
for every queued kernel: a dozen such waits per training step stall the device. So the checks are on by default
(the public API, the tests, a user's own code), and the trainer checks the first step of a stage, then runs the
rest inside `skipped()`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("rebalance_input_checks", default=True)


def enabled() -> bool:
    """True unless the caller is inside `skipped()`."""
    return _ENABLED.get()


@contextmanager
def skipped(skip: bool = True) -> Iterator[None]:
    """Inside this block the losses trust their inputs (when `skip`; `skipped(False)` changes nothing)."""
    token = _ENABLED.set(not skip and _ENABLED.get())
    try:
        yield
    finally:
        _ENABLED.reset(token)
