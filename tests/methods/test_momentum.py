"""The momentum methods (sdclr.methods.momentum, as MoCo v2 and BYOL use it): one step updates
the online and momentum networks, the momentum update is the EMA, the cosine momentum
schedule, and the state_dict round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from tiny import moco_byol_model, moco_byol_views, params

from sdclr.methods.byol import BYOL
from sdclr.methods.moco import MoCo


def make(kind: str, prune: float | None, **kw):
    dual = prune is not None
    gen = torch.Generator().manual_seed(0)
    if kind == "moco":
        return MoCo(queue_size=32, prune_ratio=prune, dual_bn=dual, generator=gen, **kw)
    return BYOL(hidden_dim=32, prune_ratio=prune, dual_bn=dual, generator=gen, **kw)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("kind", ["moco", "byol"])
@pytest.mark.parametrize("prune", [None, 0.9])
def test_one_training_step_updates_online_and_momentum_networks(kind, prune):
    model = moco_byol_model(dual_bn=prune is not None)
    method = make(kind, prune)
    density = method.on_epoch_start(model)
    if prune is None:
        assert density is None and method.masks is None and not method.pruned
    else:
        assert method.pruned and density == pytest.approx(0.1, abs=1e-3)
    method.setup(model)
    extra = method.extra_parameters()
    assert (extra == []) == (kind == "moco")
    opt = torch.optim.SGD(list(model.parameters()) + extra, lr=0.5, momentum=0.9)
    before, momentum_before = params(model), params(method.momentum_model)
    extra_before = [p.detach().clone() for p in extra]
    v1, v2 = moco_byol_views()
    loss = method.loss(model, v1, v2)
    assert loss.dim() == 0 and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    # the momentum network is frozen and receives no gradient
    assert all(not p.requires_grad and p.grad is None for p in method.momentum_model.parameters())
    assert all(p.grad is not None for p in extra)
    opt.step()
    method.after_step(model)
    after = params(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > 20
    assert any("conv" in k for k in changed) and any("head" in k for k in changed)
    assert all(not torch.equal(b, p) for b, p in zip(extra_before, extra))
    m = method.momentum
    for name, p in method.momentum_model.named_parameters():
        expected = m * momentum_before[name] + (1 - m) * after[name]
        assert torch.allclose(p, expected, atol=1e-6, rtol=0), name
    assert any(
        not torch.equal(momentum_before[k], p) for k, p in params(method.momentum_model).items()
    )


@pytest.mark.parametrize("kind", ["moco", "byol"])
def test_momentum_update_is_exactly_the_ema(kind):
    model = moco_byol_model(dual_bn=False)
    method = make(kind, None, **({"momentum": 0.9} if kind == "moco" else {"tau": 0.9}))
    method.setup(model)
    key = method.momentum_model
    assert key is not model and all(not p.requires_grad for p in key.parameters())
    assert all(torch.equal(p, q) for p, q in zip(key.parameters(), model.parameters()))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    key_before, online = params(key), params(model)
    method.after_step(model)
    for name, p in key.named_parameters():
        # the same float32 operations give the same bits; the formula up to rounding
        assert torch.equal(p, torch.add(key_before[name] * 0.9, online[name], alpha=0.1)), name
        assert torch.allclose(p, 0.9 * key_before[name] + 0.1 * online[name], atol=1e-6, rtol=0)
        assert not torch.equal(p, online[name])
    # the online network is untouched by the update
    assert all(torch.equal(online[k], v) for k, v in params(model).items())


def test_cosine_momentum_schedule():
    method = BYOL(tau=0.99, cosine_tau=True)
    method.set_progress(0.0)
    assert method.tau == pytest.approx(0.99)
    method.set_progress(0.5)
    assert method.tau == pytest.approx(0.995)
    method.set_progress(1.0)
    assert method.tau == pytest.approx(1.0)
    fixed = MoCo(momentum=0.99)
    fixed.set_progress(0.7)
    assert fixed.momentum == 0.99


@pytest.mark.parametrize("kind", ["moco", "byol"])
def test_state_dict_round_trip_restores_the_momentum_state(kind):
    model = moco_byol_model(dual_bn=True)
    method = make(kind, 0.9, cosine_momentum=True) if kind == "moco" else make(kind, 0.9)
    method.on_epoch_start(model)
    method.setup(model)
    opt = torch.optim.SGD(list(model.parameters()) + method.extra_parameters(), lr=0.5)
    for step in range(3):
        method.set_progress(step / 10)
        loss = method.loss(model, *moco_byol_views(seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model)
    state = roundtrip(method.state_dict())
    # load before setup (pending, applied when the momentum copy is created) and after
    for load_first in (True, False):
        fresh = make(kind, 0.9)
        other = moco_byol_model(dual_bn=True, seed=7)
        if load_first:
            fresh.load_state_dict(state)
            fresh.setup(other)
        else:
            fresh.setup(other)
            extra = fresh.extra_parameters()
            fresh.load_state_dict(state)
            assert fresh.extra_parameters() == extra  # loaded in place
        assert fresh.momentum == method.momentum
        a, b = fresh.momentum_model.state_dict(), method.momentum_model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        if kind == "moco":
            assert fresh.queue_ptr == method.queue_ptr == (3 * 16) % 32
            assert torch.equal(fresh.queue, method.queue)
        else:
            pa, pb = fresh.predictor.state_dict(), method.predictor.state_dict()
            assert all(torch.equal(pa[k], pb[k]) for k in pa)
    if kind == "moco":
        assert not math.isclose(method.momentum, 0.99)  # the cosine schedule moved it


def test_the_momentum_copy_compiles_in_the_online_models_mode(monkeypatch):
    """prepare_model compiles the backbone and the head in compile_mode; the momentum copy
    (deepcopy drops compilation) compiles the same submodules in the same mode."""
    from torch import nn

    from sdclr.methods.momentum import momentum_copy
    from sdclr.train.step import prepare_model
    from sdclr.utils.precision import StepSettings

    calls = []
    original = nn.Module.compile

    def recording(self, *args, **kwargs):
        calls.append((type(self).__name__, kwargs.get("mode")))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(nn.Module, "compile", recording)
    model = prepare_model(
        moco_byol_model(dual_bn=False), StepSettings(compile=True, compile_mode="max-autotune")
    )
    online = list(calls)
    calls.clear()
    momentum_copy(model)
    assert online == calls and [m for _, m in calls] == ["max-autotune"] * 2
