"""The masks (sdclr.models.pruning): the global magnitude threshold keeps exactly 1 - p of the
conv weights, covers every conv and nothing else, and the random part of the ratio."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import small_model
from torch import nn

from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.pruning import conv_weights, magnitude_masks, mask_density


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_mask_keeps_exactly_one_minus_p_of_the_conv_weights(ratio):
    model = small_model(dual_bn=True)
    named = conv_weights(model.backbone)
    n = sum(w.numel() for _, w in named)
    masks = magnitude_masks([w for _, w in named], ratio)
    kept = sum(int(m.sum()) for m in masks)
    assert kept == n - math.ceil(ratio * n)  # continuous random init: no ties
    assert mask_density(masks) == pytest.approx(1 - ratio, abs=1.0 / n + 1e-12)
    # global threshold: every kept weight is at least as large as every removed one
    mags = torch.cat([w.detach().abs().flatten() for _, w in named])
    keep = torch.cat([m.flatten() for m in masks])
    assert mags[keep].min() >= mags[~keep].max()


def test_mask_covers_every_conv_and_nothing_else():
    model = small_model(dual_bn=True)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(model)
    convs = {f"{n}.weight" for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(method.masks) == convs
    # stem, block convs and the 1x1 shortcut convs are all there
    assert "conv1.weight" in convs and any("downsample" in c for c in convs)
    for name, mask in method.masks.items():
        assert mask.shape == dict(model.backbone.named_parameters())[name].shape


def _ten_weights() -> list[torch.Tensor]:
    """Three tensors whose |w|, flattened in order, are 1, 2, ..., 10 (signs mixed)."""
    return [
        torch.tensor([1.0, -2.0, 3.0]),
        torch.tensor([[4.0, 5.0], [-6.0, 7.0]]),
        torch.tensor([8.0, -9.0, 10.0]),
    ]


def _kept(masks: list[torch.Tensor]) -> list[int]:
    return torch.cat([m.flatten() for m in masks]).nonzero().flatten().tolist()


def test_ties_at_the_cut_are_kept_as_in_the_reference():
    # |w| sorted: 1 2 2 3 4. p = 0.4: k = 2, sorted[2] (0-based) = 2, keep |w| >= 2: the one
    # weight below the cut goes and both 2s stay (a strict > rule would remove three)
    weights = [torch.tensor([2.0, -1.0, 4.0]), torch.tensor([-2.0, 3.0])]
    assert _kept(magnitude_masks(weights, 0.4)) == [0, 2, 3, 4]
    # p = 0.2: k = 1, sorted[1] = 2: the same mask
    assert _kept(magnitude_masks(weights, 0.2)) == [0, 2, 3, 4]
    # p = 0.6: k = 3, sorted[3] = 3: the 1 and both 2s go
    assert _kept(magnitude_masks(weights, 0.6)) == [2, 4]
    # p = 0: sorted[0] = 1, everything stays
    assert _kept(magnitude_masks(weights, 0.0)) == [0, 1, 2, 3, 4]


def test_without_ties_the_cut_removes_exactly_k():
    # |w| = 1..10, p = 0.3: k = 3, sorted[3] = 4, the three smallest go (N - k kept)
    assert _kept(magnitude_masks(_ten_weights(), 0.3)) == [3, 4, 5, 6, 7, 8, 9]


def test_random_pruning_on_top_of_the_magnitude_cut_by_hand():
    # the reference's rule, |w| = 1..10, p = 0.5, q = 0.2: the magnitude cut removes
    # ceil((0.5 - 0.2) * 10) = 3 (|w| 1, 2, 3), then each weight is dropped with probability
    # ceil(0.2 * 10) / (10 - 3) = 2/7. Seed 2's draws, torch.rand(10):
    # 0.6147 0.3810 0.6371 0.4745 0.7136 0.6190 0.4425 0.0958 0.6142 0.0573
    # fall below 2/7 = 0.2857 at positions 7 and 9 (|w| 8 and 10), both above the cut
    gen = torch.Generator().manual_seed(2)
    masks = magnitude_masks(_ten_weights(), 0.5, 0.2, gen, random_rule="on_top")
    assert _kept(masks) == [3, 4, 5, 6, 8]


def test_random_pruning_within_the_cut_by_hand():
    # the older, milder rule, same weights: ceil(0.2 * 10) = 2 random picks, seed 2's
    # torch.randperm(10)[:2] = positions 8 and 7 (|w| 9 and 8), count towards k = 5; the
    # other 3 removals go by magnitude (|w| 1, 2, 3)
    gen = torch.Generator().manual_seed(2)
    masks = magnitude_masks(_ten_weights(), 0.5, 0.2, gen, random_rule="within")
    assert _kept(masks) == [3, 4, 5, 6, 9]


def test_random_pruning_uses_the_references_float_arithmetic():
    # 0.9 - 0.3 is 0.6000000000000001 in float64, so over ten weights the reference's cut
    # removes ceil(6.000000000000001) = 7 (not 6), leaving |w| 8, 9, 10, and the drop
    # probability is ceil(0.3 * 10) / (10 - 7) = 3/3: nothing survives, whatever the draws
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        assert _kept(magnitude_masks(_ten_weights(), 0.9, 0.3, gen)) == []


def test_random_pruning_on_top_removes_about_q_more_among_the_large_weights():
    weights = [torch.randn(400, 250, generator=torch.Generator().manual_seed(3))]
    n = weights[0].numel()
    p, q = 0.9, 0.3
    masks = magnitude_masks(weights, p, q, torch.Generator().manual_seed(0))
    kept = int(masks[0].sum())
    n_cut = math.ceil((p - q) * n)
    expected = n - n_cut - math.ceil(q * n)  # E[kept] = (N - cut) * (1 - qN / (N - cut))
    prob = math.ceil(q * n) / (n - n_cut)
    sd = math.sqrt((n - n_cut) * prob * (1 - prob))
    assert abs(kept - expected) < 5 * sd
    # the random drops hit the largest weights too: the top 1% lose about the same share
    mags = weights[0].abs().flatten()
    top = mags >= mags.quantile(0.99)
    top_dropped = 1 - masks[0].flatten()[top].float().mean()
    assert abs(float(top_dropped) - prob) < 5 * math.sqrt(prob * (1 - prob) / int(top.sum()))


def test_random_ratio_within_removes_the_same_count_with_random_picks():
    model = small_model(dual_bn=True)
    weights = [w for _, w in conv_weights(model.backbone)]
    n = sum(w.numel() for w in weights)
    kw = {"random_rule": "within"}
    a = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(0), **kw)
    b = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(1), **kw)
    for masks in (a, b):
        assert sum(int(m.sum()) for m in masks) == n - math.ceil(0.9 * n)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    only_random = magnitude_masks(weights, 0.5, 0.5, torch.Generator().manual_seed(0), **kw)
    assert sum(int(m.sum()) for m in only_random) == n - math.ceil(0.5 * n)


def test_unknown_random_rule_is_refused():
    with pytest.raises(ValueError, match="random_rule"):
        magnitude_masks(_ten_weights(), 0.5, 0.2, random_rule="sometimes")
