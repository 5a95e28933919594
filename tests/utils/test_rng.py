"""Random state (sdclr.utils.rng): a generator state restores only on the device type that
saved it."""

from __future__ import annotations

import pytest
import torch


def test_resuming_on_another_device_type_is_one_clear_error():
    """A CUDA generator's state cannot drive a CPU generator (nor the reverse): the resume
    stops with a CheckpointError before touching any random state."""
    from sdclr.errors import CheckpointError
    from sdclr.utils.rng import restore_rng, rng_state

    g = torch.Generator().manual_seed(0)
    state = rng_state(g)
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # a CUDA (Philox) state's size
    before = torch.get_rng_state()
    torch.rand(1)
    with pytest.raises(CheckpointError, match="another device type"):
        restore_rng(state, g)
    assert not torch.equal(torch.get_rng_state(), before)  # untouched by the failed restore
    restore_rng(rng_state(g), g)  # the same device type restores
