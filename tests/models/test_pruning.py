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


def test_random_ratio_removes_the_same_count_with_random_picks():
    model = small_model(dual_bn=True)
    weights = [w for _, w in conv_weights(model.backbone)]
    n = sum(w.numel() for w in weights)
    a = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(0))
    b = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(1))
    for masks in (a, b):
        assert sum(int(m.sum()) for m in masks) == n - math.ceil(0.9 * n)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    only_random = magnitude_masks(weights, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in only_random) == n - math.ceil(0.5 * n)
