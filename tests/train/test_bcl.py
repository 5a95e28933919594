"""BCL's loss memory and strengths (sdclr.train.bcl)."""

from __future__ import annotations

import pytest
import torch

from sdclr.train import bcl


def test_loss_memory_first_sight_then_momentum():
    mem = bcl.LossMemory(5)
    assert mem.momentum == 0.97 and len(mem) == 5
    mem.update(torch.tensor([0, 2]), torch.tensor([2.0, 4.0]))
    assert torch.equal(mem.ema, torch.tensor([2.0, 0.0, 4.0, 0.0, 0.0]))
    assert mem.seen.tolist() == [True, False, True, False, False]

    mem.update(torch.tensor([2, 3]), torch.tensor([1.0, 3.0]))
    expected = torch.tensor([2.0, 0.0, 0.97 * 4.0 + 0.03 * 1.0, 3.0, 0.0])
    torch.testing.assert_close(mem.ema, expected)
    mem.update(torch.tensor([2]), torch.tensor([0.0], requires_grad=True))
    torch.testing.assert_close(mem.ema[2], torch.tensor(0.97 * (0.97 * 4.0 + 0.03)))
    # untouched samples keep their values exactly
    assert mem.ema[0] == 2.0 and mem.ema[3] == 3.0 and mem.ema[1] == 0.0
    assert not mem.ema.requires_grad


def test_loss_memory_state_dict_round_trip():
    mem = bcl.LossMemory(4, momentum=0.9)
    mem.update(torch.tensor([1, 3]), torch.tensor([0.5, 1.5]))
    state = mem.state_dict()
    other = bcl.LossMemory(4)
    other.load_state_dict(state)
    assert torch.equal(other.ema, mem.ema) and torch.equal(other.seen, mem.seen)
    assert other.momentum == 0.9
    # the state is a copy, not a view of the live memory
    mem.update(torch.tensor([1]), torch.tensor([9.0]))
    assert state["ema"][1] == 0.5
    with pytest.raises(ValueError):
        bcl.LossMemory(3).load_state_dict(state)


def test_strengths_hand_computed():
    # mean 3, deviations [-2, -1, 0, 3], max |dev| 3 -> [-2/3, -1/3, 0, 1] -> (x + 1) / 2
    s = bcl.strengths(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    torch.testing.assert_close(s, torch.tensor([1 / 6, 1 / 3, 1 / 2, 1.0]))
    assert s[3] == 1.0
    # the farthest sample below the mean reaches 0
    s = bcl.strengths(torch.tensor([0.0, 5.0, 6.0, 5.0]))
    assert s[0] == 0.0 and (s >= 0).all() and (s <= 1).all()
    # same as BCL's standardise -> divide by max |.| -> (x + 1) / 2
    ema = torch.rand(100, generator=torch.Generator().manual_seed(0)) * 7
    z = (ema - ema.mean()) / ema.std()
    torch.testing.assert_close(bcl.strengths(ema), (z / z.abs().max() + 1) / 2)
    # order preserved
    order = ema.argsort()
    assert (bcl.strengths(ema)[order].diff() >= 0).all()


def test_strengths_constant_input_is_safe():
    for ema in (torch.full((7,), 3.0), torch.zeros(4), torch.tensor([2.5])):
        s = bcl.strengths(ema)
        assert torch.equal(s, torch.full_like(ema, 0.5))


def test_memory_strengths_treat_unseen_as_average():
    mem = bcl.LossMemory(4)
    mem.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 6.0]))
    s = mem.strengths()
    torch.testing.assert_close(s, bcl.strengths(torch.tensor([1.0, 2.0, 6.0, 3.0])))
    assert torch.equal(bcl.LossMemory(3).strengths(), torch.full((3,), 0.5))
