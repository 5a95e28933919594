"""Per-iteration learning-rate schedule (linear warm-up, then cosine decay to ``min_lr``) and
a cosine schedule for the contrastive temperature."""

from __future__ import annotations

import math


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float
) -> float:
    """Learning rate for 0-based iteration ``step`` of ``total_steps``, in the reference's
    phase: its per-iteration ``LambdaLR`` is stepped *before* the optimiser, so iteration s
    trains with the schedule's value at t = s + 1. The ramp t / W (W warm-up iterations)
    reaches the peak at s = W - 1, the cosine then decays from there and the last iteration
    (t = total) lands exactly on ``min_lr``."""
    t = step + 1
    if t < warmup_steps:
        return base_lr * t / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((t - warmup_steps) / decay_steps, 1.0)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cosine_temperature(
    epoch: int | float, t_min: float = 0.1, t_max: float = 1.0, period: float = 400
) -> float:
    """Contrastive temperature oscillating between ``t_max`` (epoch 0, period, ...) and
    ``t_min`` (half periods), after Kukleva et al. 2023 ("Temperature Schedules for
    Self-Supervised Contrastive Methods on Long-Tail Data"): low temperatures favour
    instance discrimination, high ones group semantically similar samples, and alternating
    between them helps the tail classes."""
    if period <= 0:
        raise ValueError(f"period must be positive, got {period}")
    return t_min + (t_max - t_min) * (1.0 + math.cos(2.0 * math.pi * epoch / period)) / 2.0
