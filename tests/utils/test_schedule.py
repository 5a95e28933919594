"""The schedules (sdclr.utils.schedule): the learning rate's warmup then cosine, and the
cosine temperature."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from sdclr.utils.schedule import cosine_temperature, warmup_cosine


def _reference_lrs(total: int, warm: int, base: float, low: float) -> list[float]:
    """The reference's schedule, run as it runs it (VITA-Group/SDCLR train_simCLR.py): a
    LambdaLR over its cosine_annealing factor, stepped before each optimiser step."""

    def factor(t: int) -> float:
        if t < warm:
            return t / warm
        progress = (t - warm) / (total - warm)
        return low / base + (1 - low / base) * 0.5 * (1 + math.cos(progress * math.pi))

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "scheduler.step() before optimizer.step()": on purpose
        for _ in range(total):
            sched.step()
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
    return lrs


def test_warmup_then_cosine_first_peak_and_last_values():
    total, warm, base, low = 1000, 100, 0.5, 1e-6
    lrs = [warmup_cosine(s, total, warm, base, low) for s in range(total)]
    assert lrs[0] == base / warm  # first iteration: one step into the ramp
    assert all(a < b for a, b in zip(lrs[: warm - 1], lrs[1:warm]))  # linear ramp
    assert lrs[warm - 1] == base  # the peak, reached once
    assert lrs[warm] < base
    assert lrs[warm] == pytest.approx(low + (base - low) * 0.5 * (1 + math.cos(math.pi / 900)))
    assert all(a > b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))  # strictly decaying
    assert lrs[-1] == pytest.approx(low, rel=1e-12)  # the last iteration lands on min_lr
    mid = warm - 1 + (total - warm) // 2
    assert lrs[mid] == pytest.approx(low + (base - low) * 0.5)


@pytest.mark.parametrize("total,warm", [(1000, 100), (230, 10), (50, 1)])
def test_schedule_matches_the_reference_lambdalr_stepped_before_the_optimiser(total, warm):
    ours = [warmup_cosine(s, total, warm, 0.5, 1e-6) for s in range(total)]
    assert ours == pytest.approx(_reference_lrs(total, warm, 0.5, 1e-6), rel=1e-12, abs=0)


def test_cosine_temperature():
    assert cosine_temperature(0) == pytest.approx(1.0)
    assert cosine_temperature(200) == pytest.approx(0.1)
    assert cosine_temperature(400) == pytest.approx(1.0)
    assert cosine_temperature(100) == pytest.approx(0.55)
    assert cosine_temperature(25, t_min=0.2, t_max=0.6, period=50) == pytest.approx(0.2)
    assert cosine_temperature(50.0, t_min=0.2, t_max=0.6, period=50) == pytest.approx(0.6)
    values = [cosine_temperature(e) for e in range(0, 201, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing over the first half
