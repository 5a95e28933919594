"""The probe machinery."""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from sdclr.eval.features import EvalSettings
from sdclr.eval.probe import train_probe


class MeanColour(nn.Module):
    """A frozen 'encoder' whose features are the per-channel mean: enough to separate
    solid-colour classes, so the probe's own mechanics are what is tested."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm1d(3)  # eval mode must be used: running stats are identity

    def forward(self, x):
        return self.bn(x.mean(dim=(2, 3)))


def colour_images(n_per_class, seed):
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.float)
    labels = torch.arange(3).repeat_interleave(n_per_class)
    noise = torch.randint(-20, 21, (len(labels), 3, 8, 8), generator=g).float()
    images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
    return images, labels


def probe_cfg(**kw):
    base = dict(
        epochs=6,
        batch_size=16,
        lr=30.0,
        momentum=0.9,
        weight_decay=0.0,
        milestones=[3, 5],
        gamma=0.1,
        augment=True,
        eval_batch_size=64,
    )
    return OmegaConf.create({**base, **kw})


def test_probe_learns_a_separable_problem_and_reports_by_group():
    images, labels = colour_images(40, 0)
    test_x, test_y = colour_images(10, 1)
    idx = np.arange(len(labels))
    train_idx, val_idx = idx[idx % 4 != 0], idx[idx % 4 == 0]
    groups = {"many": [0], "medium": [1], "few": [2]}
    encoder = MeanColour()
    before = encoder.bn.running_mean.clone()
    r = train_probe(
        encoder,
        images,
        labels,
        train_idx,
        val_idx,
        test_x,
        test_y,
        probe_cfg(),
        EvalSettings(3, groups, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], batch_size=64),
        torch.Generator().manual_seed(0),
        progress=False,
    )
    assert r["acc"] == 100.0 and r["per_class"] == [100.0, 100.0, 100.0]
    assert (r["many"], r["medium"], r["few"], r["std"]) == (100.0, 100.0, 100.0, 0.0)
    assert len(r["val_acc"]) == 6 and r["best_val_acc"] == max(r["val_acc"])
    assert r["val_acc"][r["best_epoch"] - 1] == r["best_val_acc"]
    assert r["train_images"] == len(train_idx)
    assert torch.equal(encoder.bn.running_mean, before)  # frozen, eval-mode BN
    assert not any(p.requires_grad for p in encoder.parameters())


def test_probe_picks_the_best_validation_epoch_not_the_last():
    images, labels = colour_images(40, 0)
    test_x, test_y = colour_images(10, 1)
    idx = np.arange(len(labels))
    # a huge learning rate that never decays makes later epochs erratic
    r = train_probe(
        MeanColour(),
        images,
        labels,
        idx[idx % 4 != 0],
        idx[idx % 4 == 0],
        test_x,
        test_y,
        probe_cfg(lr=3000.0, milestones=[], epochs=8),
        EvalSettings(
            3, {"many": [0], "medium": [1], "few": [2]}, [0.5] * 3, [0.25] * 3, batch_size=64
        ),
        torch.Generator().manual_seed(0),
        progress=False,
    )
    assert r["best_val_acc"] == max(r["val_acc"])
    assert r["best_epoch"] == int(np.argmax(r["val_acc"])) + 1
