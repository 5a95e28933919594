"""The self-competitor: SDCLR's pruned branch as a mask, one global magnitude threshold over
all backbone convs, recomputed from the dense weights at every epoch start
(:class:`SelfCompetitor`, built from the config by :func:`build_competitor` and held by
SimCLR / SDCLR and by the momentum methods alike).

The rule is the reference implementation's (VITA-Group/SDCLR ``prune/mask.py``,
``magnitudePruning``), N being the number of conv weights and p the prune ratio:

* **Magnitude.** With k = ceil(p * N), sort |w| ascending and keep every weight with
  |w| >= sorted[k] (0-based; the index is clipped to N - 1). Without ties that removes
  exactly the k smallest and keeps N - k, so p = 0.9 keeps 10%. A weight equal to the cut
  value is kept: with ties at sorted[k] (neighbouring float32 magnitudes are often equal)
  fewer than k are removed. protocol.md writes ``|w| >= threshold`` with the threshold "the
  k-th smallest": read 0-based, as the reference indexes, that is this rule.
* **Random** (``random_ratio`` q, ``random_rule="on_top"``, the reference's): the magnitude
  cut removes ceil((p - q) * N), then every weight is dropped independently with probability
  ceil(q * N) / (N - ceil((p - q) * N)), so about q * N more go *on top of* the magnitude cut,
  among the large weights. ``random_rule="within"`` is this suite's older, milder rule:
  ceil(q * N) weights chosen at random count towards the k removed and the rest of the k go
  by magnitude, so random picks often land on weights the cut would have removed anyway. An
  ablation with "within" does not reproduce the reference's.

Everything runs on the weights' device (``torch.kthvalue``, no host sort).
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: How random pruning combines with the magnitude cut (see the module docstring).
RANDOM_RULES = ("on_top", "within")


def conv_weights(backbone: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Every Conv2d weight of the backbone (stem, blocks and 1x1 shortcuts)."""
    return [
        (f"{name}.weight", m.weight)
        for name, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d)
    ]


def _keep_at_least(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Keep every value >= the 0-based ``k``-th smallest (index clipped to the last): the k
    smallest go, ties with the cut value stay."""
    index = min(k, flat.numel() - 1)
    threshold = torch.kthvalue(flat, index + 1).values  # kthvalue counts from 1
    return flat >= threshold


@torch.no_grad()
def magnitude_masks(
    weights: list[torch.Tensor],
    ratio: float,
    random_ratio: float = 0.0,
    generator: torch.Generator | None = None,
    random_rule: str = "on_top",
) -> list[torch.Tensor]:
    """Boolean keep-masks shaped like ``weights``: ``ratio`` of them removed, ``random_ratio``
    of them at random by ``random_rule`` (drawn from ``generator``)."""
    if random_rule not in RANDOM_RULES:
        raise ValueError(f"random_rule must be one of {RANDOM_RULES}, got {random_rule!r}")
    flat = torch.cat([w.detach().abs().flatten().float() for w in weights])
    n = flat.numel()
    if random_ratio > 0 and random_rule == "on_top":
        # the reference's arithmetic, float rounding of p - q included
        n_magnitude = math.ceil((ratio - random_ratio) * n)
        n_random = math.ceil(random_ratio * n)
        keep = _keep_at_least(flat, n_magnitude)
        drop_prob = n_random / (n - n_magnitude)
        draws = torch.rand(n, generator=generator, device=flat.device)
        keep &= draws >= drop_prob
    else:
        k = math.ceil(ratio * n)
        if k == 0:
            keep = torch.ones_like(flat, dtype=torch.bool)
        else:
            if random_ratio > 0:  # "within": the random picks count towards the k
                n_random = min(math.ceil(random_ratio * n), k)
                chosen = torch.randperm(n, generator=generator, device=flat.device)[:n_random]
                flat[chosen] = -1.0  # below every magnitude, so among the k removed
            keep = _keep_at_least(flat, k)
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
    """The pruned branch's mask state: ``ratio`` p of the conv weights removed
    (``random_ratio`` q of them at random by ``random_rule``, drawn from ``generator``), the
    current ``masks`` (``{conv weight name: mask}`` in the weights' dtype, None before the
    first :meth:`update`), fixed within an epoch and refreshed in place by the next update
    (the same tensors, new values). The dense weights are never zeroed: a branch multiplies
    them by the mask."""

    def __init__(
        self,
        ratio: float,
        random_ratio: float = 0.0,
        generator: torch.Generator | None = None,
        random_rule: str = "on_top",
    ):
        self.ratio = ratio
        self.random_ratio = random_ratio
        self.generator = generator
        self.random_rule = random_rule
        self.masks: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, backbone: nn.Module) -> float:
        """Recompute the mask from the backbone's current dense weights; returns its density."""
        named = conv_weights(backbone)
        masks = magnitude_masks(
            [w for _, w in named], self.ratio, self.random_ratio, self.generator, self.random_rule
        )
        # multiplied into the weights, so kept in the weights' dtype
        new = {name: m.to(w.dtype) for (name, w), m in zip(named, masks)}
        old = self.masks
        if (
            old is not None
            and all(
                k in old
                and (old[k].shape, old[k].dtype, old[k].device) == (v.shape, v.dtype, v.device)
                for k, v in new.items()
            )
            and len(old) == len(new)
        ):
            # refreshed in place: the model's conv buffers stay bound to the same storage, which
            # a compiled graph (CUDA graphs above all) reads at a fixed address
            for k, v in new.items():
                old[k].copy_(v)
        else:
            self.masks = new
        return mask_density(masks)


def build_competitor(cfg, generator: torch.Generator | None = None) -> SelfCompetitor | None:
    """The config's self-competitor (the ``prune`` keys), None with ``prune=none``. The one
    place the pruning keys are read, so every method gets the same pruned branch and a new
    pruning option is an edit here and in :class:`SelfCompetitor`. ``generator`` draws the
    random pruning (the loop's, so checkpoints capture it)."""
    p = cfg.prune
    if p.ratio is None:
        return None
    return SelfCompetitor(p.ratio, float(p.random_ratio), generator, str(p.random_rule))


def as_competitor(
    pruning: SelfCompetitor | float | None,
    generator: torch.Generator | None = None,
    random_ratio: float = 0.0,
) -> SelfCompetitor | None:
    """What a method constructor's ``prune_ratio`` names: a competitor built by
    :func:`build_competitor` as it is, None as no pruned branch, and a bare ratio (the
    shorthand of tests and the bench) as a competitor of that ratio, with ``random_ratio``
    of it at random by the default rule."""
    if pruning is None or isinstance(pruning, SelfCompetitor):
        if random_ratio:
            raise ValueError(
                "random_ratio goes with a bare prune ratio; a SelfCompetitor has its own"
            )
        return pruning
    return SelfCompetitor(pruning, random_ratio, generator)
