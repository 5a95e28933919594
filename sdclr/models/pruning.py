"""The self-competitor: SDCLR's pruned branch as a mask, one global magnitude threshold over
all backbone convs, recomputed from the dense weights at every epoch start
(:class:`SelfCompetitor`, held by SimCLR / SDCLR and by the momentum methods alike).

k = ceil(p * N) weights are removed, N being the number of conv weights: the threshold is the
k-th smallest |w| and the mask keeps |w| > threshold, so exactly N - k weights survive (up to
ties at the threshold). protocol.md writes ``|w| >= threshold``, which would keep the k-th
smallest weight too (N - k + 1); removing exactly k matches "p = 0.9 keeps 10%" and torch's
own global magnitude pruning.
With ``random_ratio`` q, ceil(q * N) of those k are chosen at random first and the rest by
magnitude. Everything runs on the weights' device (``torch.kthvalue``, no host sort).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_weights(backbone: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every Conv2d weight of the backbone (stem, blocks and 1x1 shortcuts)."""
    return [
        (f"{name}.weight", m.weight)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d)
    ]


@torch.no_grad()
def magnitude_masks(
    weights: list[torch.Tensor],
    ratio: float,
    random_ratio: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Boolean keep-masks shaped like ``weights``."""
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    n = flat.numel()
    k = math.ceil(ratio * n)
    if k == 0:
        return [torch.ones_like(w, dtype=torch.bool) for w in weights]
    n_random = min(math.ceil(random_ratio * n), k) if random_ratio > 0 else 0
    if n_random:
        chosen = torch.randperm(n, generator=generator, device=flat.device)[:n_random]
        flat[chosen] = -1.0  # below every magnitude, so among the k removed
    threshold = torch.kthvalue(flat, k).values
    keep = flat > threshold
    masks, start = [], 0
    for w in weights:
        masks.append(keep[start : start + w.numel()].view_as(w))
        start += w.numel()
    return masks


def mask_density(masks: list[torch.Tensor]) -> float:
    kept = sum(int(m.sum()) for m in masks)
    total = sum(m.numel() for m in masks)
    return kept / max(total, 1)


class SelfCompetitor:
    """The pruned branch's mask state: ``ratio`` p of the conv weights removed (``random_ratio``
    q of them at random, drawn from ``generator``), the current ``masks`` (``{conv weight
    name: mask}`` in the weights' dtype, None before the first :meth:`update`), fixed within
    an epoch. The dense weights are never zeroed: a branch multiplies them by the mask."""

    def __init__(
        self, ratio: float, random_ratio: float = 0.0, generator: torch.Generator | None = None
    ):
        self.ratio = ratio
        self.random_ratio = random_ratio
        self.generator = generator
        self.masks: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> float:
        """Recompute the mask from the backbone's current dense weights; returns its density."""
        named = conv_weights(backbone)
        masks = magnitude_masks(
            [w for _, w in named], self.ratio, self.random_ratio, self.generator
        )
        # multiplied into the weights, so kept in the weights' dtype
        self.masks = {name: m.to(w.dtype) for (name, w), m in zip(named, masks)}
        return mask_density(masks)
