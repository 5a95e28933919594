"""The method factory (sdclr.methods.registry): one CPU step of every method, loss and option,
each built from its config."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close64
from tiny import params, tiny_cfg, tiny_model

from sdclr.methods.registry import build_method
from sdclr.train.step import make_optimizer, train_step
from sdclr.utils.precision import StepSettings


@pytest.mark.parametrize(
    "overrides",
    [
        ["prune=none"],
        ["loss=debiased"],
        ["loss=hard", "prune=none"],
        ["method=moco", "prune=none"],
        ["method=moco", "prune=p30"],
        ["method=moco", "prune=p30", "loss=hard"],
        ["method=moco", "prune=none", "method.mochi=true"],
        ["method=moco", "prune=none", "method.symmetric=false"],
        ["method=byol", "prune=none"],
        ["method=byol", "prune=p90"],
    ],
    ids=lambda o: "-".join(o),
)
@pytest.mark.numerics
def test_one_step_of_each_method_through_the_factory(overrides):
    cfg = tiny_cfg(*overrides)
    model = tiny_model(cfg, dtype=torch.float64)  # the identities below: tests/numerics.py
    method = build_method(cfg, torch.Generator().manual_seed(0))
    assert type(method).__name__ == {"simclr": "SimCLR", "moco": "MoCo"}.get(
        cfg.method.name, "BYOL"
    )
    assert method.pruned == (cfg.prune.ratio is not None)
    method.on_epoch_start(model)
    method.setup(model)
    extra = method.extra_parameters()
    assert bool(extra) == (cfg.method.name == "byol")
    opt = make_optimizer(model, cfg.pretrain, extra)
    assert len(opt.param_groups[0]["params"]) == len(list(model.parameters())) + len(extra)
    momentum_before = params(method.momentum_model) if cfg.method.name != "simclr" else None
    before = params(model)
    method.track_samples = True
    v1, v2 = torch.randn(
        2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    loss = train_step(model, method, opt, v1, v2, StepSettings())  # after_step included
    assert loss.dim() == 0 and torch.isfinite(loss)
    after = params(model)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 20
    per = method.sample_losses()
    assert per.shape == (8,) and torch.isfinite(per).all() and not per.requires_grad
    # per-sample losses are each sample's mean over its anchors: SimCLR averages all anchors,
    # MoCo and BYOL sum their two directions. They are stored as float32 (BCL's memory), so
    # the float64 identity holds up to their rounding: 2^-24 relative each, and the mean of
    # positive values keeps that bound; 4x of it for room
    directions = 1 if cfg.method.name == "simclr" or not cfg.method.symmetric else 2
    assert per.dtype == torch.float32
    assert abs(float(per.double().mean()) * directions - float(loss)) <= 2**-22 * float(loss)
    if cfg.method.name != "simclr":
        m = method.momentum
        for name, p in method.momentum_model.named_parameters():
            expected = m * momentum_before[name] + (1 - m) * after[name]
            assert_close64(p, expected, what=name)
    if cfg.method.name == "moco":  # both views' keys of the 8 images, or view 2's
        assert method.queue_ptr == (16 if cfg.method.symmetric else 8)
