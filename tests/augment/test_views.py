"""The views (sdclr.augment.views): lists of decoded files give the batched views on equal
sizes."""

from __future__ import annotations

import torch


def test_list_views_match_the_batched_views_on_equal_sizes():
    from sdclr.augment.ops import ContrastiveAugmentConfig
    from sdclr.augment.views import contrastive_view, eval_view, probe_train_view

    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    cfg = ContrastiveAugmentConfig(size=24, scale=(0.08, 1.0), blur_p=0.5)
    a = contrastive_view(x, cfg, torch.Generator().manual_seed(3))
    b = contrastive_view(list(x), cfg, torch.Generator().manual_seed(3))
    # same parameters from the same draws; the resize kernels differ only in float rounding
    assert a.shape == b.shape == (6, 3, 24, 24)
    assert (a - b).abs().max() < 2e-3
    p = probe_train_view(x, "resized", 24, torch.Generator().manual_seed(1))
    q = probe_train_view(list(x), "resized", 24, torch.Generator().manual_seed(1))
    assert (p - q).abs().max() < 2e-3
    e = eval_view(x, 32, 40)  # Resize(40) is the identity here: a central 32 px crop
    assert torch.allclose(e, x[:, :, 4:36, 4:36].float() / 255, atol=1e-5)
    assert torch.allclose(eval_view(list(x), 32, 40), e, atol=1e-6)
