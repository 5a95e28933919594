"""The schedules (sdclr.utils.schedule): the learning rate's warmup then cosine, and the
cosine temperature."""

from __future__ import annotations

import math

import pytest

from sdclr.utils.schedule import cosine_temperature, warmup_cosine


def test_warmup_then_cosine():
    total, warm, base, low = 1000, 100, 0.5, 1e-6
    lrs = [warmup_cosine(s, total, warm, base, low) for s in range(total)]
    assert lrs[0] == pytest.approx(base / warm) and lrs[warm - 1] == pytest.approx(base)
    assert all(a < b for a, b in zip(lrs[: warm - 1], lrs[1:warm]))  # linear ramp
    assert lrs[warm] == pytest.approx(base)
    mid = warm + (total - warm) // 2
    assert lrs[mid] == pytest.approx(low + (base - low) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))
    assert warmup_cosine(total, total, warm, base, low) == pytest.approx(low)


def test_cosine_temperature():
    assert cosine_temperature(0) == pytest.approx(1.0)
    assert cosine_temperature(200) == pytest.approx(0.1)
    assert cosine_temperature(400) == pytest.approx(1.0)
    assert cosine_temperature(100) == pytest.approx(0.55)
    assert cosine_temperature(25, t_min=0.2, t_max=0.6, period=50) == pytest.approx(0.2)
    assert cosine_temperature(50.0, t_min=0.2, t_max=0.6, period=50) == pytest.approx(0.6)
    values = [cosine_temperature(e) for e in range(0, 201, 10)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decreasing over the first half
