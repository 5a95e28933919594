"""The probe machinery."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sdclr.eval.features import EvalSettings
from sdclr.eval.probe import ProbeData, fit_probe


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
        lr_step="epoch_start",
        val_every=1,
        select_metric="top1",
        normalize=False,
        augment=True,
        eval_batch_size=64,
    )
    return OmegaConf.create({**base, **kw})


GROUPS = {"many": [0], "medium": [1], "few": [2]}


def _settings(classes=3, groups=GROUPS):
    return EvalSettings(classes, groups, [0.5] * 3, [0.25] * 3, batch_size=64)


def _run(cfg, encoder=None, seed=0, log=None, data=None, settings=None):
    """The probe of ``encoder`` (default MeanColour) on ``data`` (training images and labels,
    test images and labels; default the three colour classes, 40 and 10 per class), every
    fourth training image held out for validation."""
    (images, labels), (test_x, test_y) = data or (colour_images(40, 0), colour_images(10, 1))
    idx = np.arange(len(labels))
    return fit_probe(
        encoder or MeanColour(),
        ProbeData.of(images, labels, idx[idx % 4 != 0], idx[idx % 4 == 0], test_x, test_y),
        cfg,
        settings or _settings(),
        torch.Generator().manual_seed(seed),
        progress=False,
        log=log,
    )


def test_probe_learns_a_separable_problem_and_reports_by_group():
    images, labels = colour_images(40, 0)
    test_x, test_y = colour_images(10, 1)
    idx = np.arange(len(labels))
    train_idx, val_idx = idx[idx % 4 != 0], idx[idx % 4 == 0]
    groups = {"many": [0], "medium": [1], "few": [2]}
    encoder = MeanColour()
    before = encoder.bn.running_mean.clone()
    r = fit_probe(
        encoder,
        ProbeData.of(images, labels, train_idx, val_idx, test_x, test_y),
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
    # a huge learning rate that never decays makes later epochs erratic
    r = _run(probe_cfg(lr=3000.0, milestones=[], epochs=8))
    assert r["best_val_acc"] == max(r["val_acc"])
    assert r["best_epoch"] == int(np.argmax(r["val_acc"])) + 1


# --- the learning-rate grid ---------------------------------------------------------------


def _one_head_loop(cfg, seed=0):
    """The protocol's single-rate probe written out as the suite ran it before the grid (one
    nn.Linear, its init then the epoch permutations from one generator, the pad-4 crop +
    flip, SGD + MultiStepLR stepped at the start of the epoch as the reference's CIFAR probe
    does, or at its end, the best validation epoch): the default must match it exactly."""
    from sdclr.augment.ops import normalize
    from sdclr.augment.views import probe_train_view
    from sdclr.data.banks import as_images
    from sdclr.eval.features import encode, extract_bank_features

    images, labels = colour_images(40, 0)
    test_x, _ = colour_images(10, 1)
    bank, test_bank = as_images(images), as_images(test_x)
    idx = np.arange(len(labels))
    train_idx, val_idx = torch.as_tensor(idx[idx % 4 != 0]), torch.as_tensor(idx[idx % 4 == 0])
    encoder, settings, g = MeanColour().eval(), _settings(), torch.Generator().manual_seed(seed)
    settings = settings.sized_for(bank)
    val_feats = extract_bank_features(encoder, bank, val_idx, settings)
    test_feats = extract_bank_features(encoder, test_bank, torch.arange(len(test_x)), settings)
    linear = nn.Linear(val_feats.shape[1], 3)
    nn.init.normal_(linear.weight, 0.0, 0.01, generator=g)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.SGD(linear.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    best, best_state, curve = -1.0, None, []
    for _epoch in range(cfg.epochs):
        if cfg.lr_step == "epoch_start":
            with pytest.warns(UserWarning) if _epoch == 0 else contextlib.nullcontext():
                sched.step()  # before optimizer.step(): PyTorch warns the first time
        perm = torch.randperm(len(train_idx), generator=g)
        for s in range(0, len(train_idx), cfg.batch_size):
            sel = train_idx[perm[s : s + cfg.batch_size]]
            with torch.no_grad():
                x = probe_train_view(images[sel], "pad", 8, g)
                feats = encode(encoder, normalize(x, settings.mean, settings.std), None)
            loss = nn.functional.cross_entropy(linear(feats), labels[sel])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if cfg.lr_step == "epoch_end":
            sched.step()
        with torch.no_grad():
            acc = float((linear(val_feats).argmax(1) == labels[val_idx]).float().mean()) * 100
        curve.append(acc)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in linear.state_dict().items()}
    linear.load_state_dict(best_state)
    with torch.no_grad():
        return curve, linear(test_feats).argmax(1)


@pytest.mark.parametrize("lr_step", ["epoch_start", "epoch_end"])
def test_the_default_single_rate_is_the_protocols_one_head_probe(lr_step):
    cfg = probe_cfg(lr=3.0, epochs=5, milestones=[2, 4], lr_step=lr_step)
    r = _run(cfg)
    curve, pred = _one_head_loop(cfg)
    assert r["val_acc"] == curve and r["lr"] == 3.0
    test_y = colour_images(10, 1)[1]
    per_class = [float((pred[test_y == c] == c).float().mean()) * 100 for c in range(3)]
    assert r["per_class"] == per_class
    assert r["grid"] == [
        {
            "lr": 3.0,
            "val_epochs": [1, 2, 3, 4, 5],
            "val_acc": curve,
            "val_top5": [100.0] * 5,  # three classes: top-5 is top-3
            "best_val_acc": max(curve),
            "best_val_top5": 100.0,
            "best_epoch": r["best_epoch"],
            "diverged_epoch": None,
        }
    ]
    # the grid of one rate is the single rate
    timings = ("seconds", "setup_seconds", "train_seconds")
    grid_of_one = _run(probe_cfg(lr=30.0, lrs=[3.0], epochs=5, milestones=[2, 4], lr_step=lr_step))
    assert {k: v for k, v in grid_of_one.items() if k not in timings} == {
        k: v for k, v in r.items() if k not in timings
    }


class Loud(MeanColour):
    """MeanColour x 1e4: a gradient step of rate 1e38 overflows float32 at once, and rates
    scale by 1e-8 (the gradient and the step's effect on the logits both grow by 1e4)."""

    def forward(self, x):
        return super().forward(x) * 1e4


def test_the_grid_picks_the_best_validation_over_rates_and_epochs():
    # a rate too small to move the init in 6 epochs, the protocol's 30 (x 1e-8), and one so
    # large that the first step overflows: it goes non-finite and drops out
    r = _run(probe_cfg(lrs=[1e-15, 30e-8, 1e38]), encoder=Loud())
    tiny, good, huge = r["grid"]
    assert [g["lr"] for g in r["grid"]] == [1e-15, 30e-8, 1e38]
    assert huge["diverged_epoch"] == 1 and huge["val_acc"] == [None] * 6
    assert huge["best_val_acc"] is None and huge["best_epoch"] is None
    assert tiny["diverged_epoch"] is None and len(tiny["val_acc"]) == 6
    best = max(
        (acc, -i) for i, g in enumerate(r["grid"]) for acc in g["val_acc"] if acc is not None
    )
    chosen = r["grid"][-best[1]]
    assert r["best_val_acc"] == best[0] == chosen["best_val_acc"] == max(chosen["val_acc"])
    assert r["lr"] == chosen["lr"] and r["val_acc"] == chosen["val_acc"]
    assert r["best_epoch"] == chosen["best_epoch"]
    assert r["lr"] == 30e-8 and r["acc"] == 100.0 and r["diverged_epoch"] is None
    assert good["best_val_acc"] > tiny["best_val_acc"]


def test_a_rate_that_diverges_alone_is_reported_as_such():
    r = _run(probe_cfg(lr=1e38), encoder=Loud())
    assert r["diverged_epoch"] == 1 and r["best_val_acc"] is None and r["lr"] == 1e38


class Constant(nn.Module):
    """Features that say nothing: the probe can only predict one class for everything."""

    def forward(self, x):
        return torch.zeros(len(x), 4)


def test_collapse_names_divergence_and_chance_level():
    from sdclr.eval.collapse import chance_level, collapse_reason

    labels = colour_images(40, 0)[1].numpy()
    val = labels[np.arange(len(labels)) % 4 == 0]
    diverged = _run(probe_cfg(lr=1e38), encoder=Loud())
    reason = collapse_reason(diverged, val, "linear")
    assert "non-finite at epoch 1" in reason and "linear.lrs=[0.001,0.01,0.1,1,10,30]" in reason
    flat = _run(probe_cfg(), encoder=Constant())
    assert flat["best_val_acc"] == pytest.approx(100 / 3)  # one class of three, balanced
    reason = collapse_reason(flat, val, "fewshot")
    assert "at chance level" in reason and "fewshot.lrs=" in reason
    grid = _run(probe_cfg(lrs=[1.0, 30.0]), encoder=Constant())
    assert "no class information" in collapse_reason(grid, val, "linear")
    assert collapse_reason(_run(probe_cfg()), val, "linear") is None
    # chance: the largest class's share, with its binomial sd
    assert chance_level(np.array([0, 0, 1, 2])) == (50.0, 25.0)
    balanced = np.arange(1000) % 10
    result = {"grid": [{}], "lr": 30.0, "diverged_epoch": None}
    assert collapse_reason({**result, "best_val_acc": 12.8}, balanced, "linear") is not None
    assert collapse_reason({**result, "best_val_acc": 12.9}, balanced, "linear") is None
