"""MoCo v2 (+ MoCHi) and BYOL: the queue, the momentum updates, the losses, the pruned branch
and the checkpoint state, on tiny ResNets."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64, max_abs
from torch import nn

from sdclr.errors import ConfigError
from sdclr.losses.byol import byol_loss
from sdclr.losses.moco import info_nce, mochi_negatives, moco_logits
from sdclr.methods.byol import BYOL
from sdclr.methods.moco import MoCo
from sdclr.models.backbone import set_bn_branch
from sdclr.models.contrastive import build_model

CHANNELS = [8, 16, 32, 64]
OUT_DIM = 16
F64 = torch.float64  # the identities are checked in float64 (tests/numerics.py)


def small_model(dual_bn: bool, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_model("resnet18", True, CHANNELS, 2, OUT_DIM, dual_bn).to(dtype)


def views(n=8, size=16, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 3, size, size, generator=g, dtype=dtype) for _ in range(2))


def make(kind: str, prune: float | None, **kw):
    dual = prune is not None
    gen = torch.Generator().manual_seed(0)
    if kind == "moco":
        return MoCo(queue_size=32, prune_ratio=prune, dual_bn=dual, generator=gen, **kw)
    return BYOL(hidden_dim=32, prune_ratio=prune, dual_bn=dual, generator=gen, **kw)


def params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def reference_infonce(q, k, queue, t):
    """-log(exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.n_j/t))), averaged, anchor by anchor."""
    total = 0.0
    for i in range(q.shape[0]):
        pos = q[i] @ k[i] / t
        negs = torch.stack([q[i] @ n / t for n in queue])
        total = total - (pos - torch.logsumexp(torch.cat([pos[None], negs]), 0))
    return total / q.shape[0]


@pytest.mark.parametrize("kind", ["moco", "byol"])
@pytest.mark.parametrize("prune", [None, 0.9])
def test_one_training_step_updates_online_and_momentum_networks(kind, prune):
    model = small_model(dual_bn=prune is not None)
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
    v1, v2 = views()
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
    model = small_model(dual_bn=False)
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


def test_queue_pointer_content_and_wraparound():
    model = small_model(dual_bn=False)
    method = MoCo(queue_size=10, generator=torch.Generator().manual_seed(0))
    method.setup(model)
    assert method.queue.shape == (10, OUT_DIM) and method.queue_ptr == 0
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(10))
    initial = method.queue.clone()
    g = torch.Generator().manual_seed(1)
    batches = [F.normalize(torch.randn(4, OUT_DIM, generator=g), dim=1) for _ in range(3)]
    method.enqueue(batches[0])
    assert method.queue_ptr == 4
    assert torch.equal(method.queue[:4], batches[0]) and torch.equal(method.queue[4:], initial[4:])
    method.enqueue(batches[1])
    assert method.queue_ptr == 8 and torch.equal(method.queue[4:8], batches[1])
    method.enqueue(batches[2])  # 4 keys at slot 8: two at the end, two wrap to the start
    assert method.queue_ptr == 2
    assert torch.equal(method.queue[8:], batches[2][:2])
    assert torch.equal(method.queue[:2], batches[2][2:])
    assert torch.equal(method.queue[2:4], batches[0][2:])  # not yet overwritten
    # more keys than slots: the last 10 survive, each at its own slot (ptr + j) % K
    big = F.normalize(torch.randn(25, OUT_DIM, generator=g), dim=1)
    method.enqueue(big)
    assert method.queue_ptr == (2 + 25) % 10
    for j in range(15, 25):
        assert torch.equal(method.queue[(2 + j) % 10], big[j])


@pytest.mark.numerics
def test_moco_logits_equal_the_hand_computed_infonce():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (F.normalize(torch.randn(n, 6, generator=g, dtype=F64), dim=1) for n in (5, 5, 7))
    for t in (0.2, 0.5):
        logits = moco_logits(q, k, queue, t)
        assert logits.shape == (5, 8)
        assert_close64(logits[:, 0], (q * k).sum(1) / t, what="positive logits")
        loss = info_nce(logits)
        assert_close64(loss, reference_infonce(q, k, queue, t), what=f"loss t={t}")
    # a positive equal to the query and negatives opposite to it: near-zero loss
    assert info_nce(moco_logits(q[:1], q[:1], -q[:1].expand(7, 6), 0.2)) < 1e-3


@pytest.mark.numerics
def test_prune_none_is_plain_moco_v2():
    model = small_model(dual_bn=False, dtype=F64)
    method = MoCo(temperature=0.2, queue_size=32, generator=torch.Generator().manual_seed(0))
    method.setup(model)
    online, key = copy.deepcopy(model), copy.deepcopy(model)
    queue = method.queue.clone()
    assert queue.dtype == F64  # the queue takes the model's dtype
    v1, v2 = views(dtype=F64)
    loss = method.loss(model, v1, v2)
    loss.backward()
    # reference: both views through the query encoder in one batch, keys from the copy
    q1, q2 = F.normalize(online(torch.cat([v1, v2])), dim=1).chunk(2)
    with torch.no_grad():
        k1, k2 = F.normalize(key(torch.cat([v1, v2])), dim=1).chunk(2)
    ref = reference_infonce(q1, k2, queue, 0.2) + reference_infonce(q2, k1, queue, 0.2)
    ref.backward()
    assert_close64(loss, ref, what="loss")
    ref_grads = dict(online.named_parameters())
    scale = max_abs(p.grad for p in online.parameters())
    for name, p in model.named_parameters():
        assert_close64(p.grad, ref_grads[name].grad, scale, name)
    # this step's keys are enqueued after the loss: k1 then k2 at slots 0..15
    assert method.queue_ptr == 16
    assert_close64(method.queue[:16], torch.cat([k1, k2]), what="enqueued keys")
    assert torch.equal(method.queue[16:], queue[16:])
    # asymmetric MoCo v2: one query (view 1, dense), key of view 2, k2 enqueued
    asym = MoCo(queue_size=32, symmetric=False, generator=torch.Generator().manual_seed(0))
    model2 = small_model(dual_bn=False, dtype=F64)
    asym.setup(model2)
    q_ref, k_ref, queue2 = copy.deepcopy(model2), copy.deepcopy(model2), asym.queue.clone()
    loss2 = asym.loss(model2, v1, v2)
    with torch.no_grad():
        k2 = F.normalize(k_ref(v2), dim=1)
        ref2 = reference_infonce(F.normalize(q_ref(v1), dim=1), k2, queue2, 0.2)
    assert_close64(loss2, ref2, what="asymmetric loss")
    assert asym.queue_ptr == 8
    assert_close64(asym.queue[:8], k2, what="asymmetric enqueued keys")


def pruned_copy(model, masks):
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in masks.items():
            dict(pruned.backbone.named_parameters())[name].mul_(mask)
    return pruned


def recording_forward(model, calls):
    original = model.forward

    def forward(x, branch=0, masks=None):
        calls.append((branch, masks))
        return original(x, branch=branch, masks=masks)

    model.forward = forward


@pytest.mark.numerics
def test_pruned_moco_queries_view_two_through_the_pruned_branch():
    model = small_model(dual_bn=True, dtype=F64)
    method = MoCo(queue_size=32, prune_ratio=0.9, dual_bn=True)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method.loss(model, *views())
    density = method.on_epoch_start(model)
    assert density == pytest.approx(0.1, abs=1e-3)
    kept = sum(int(m.sum()) for m in method.masks.values())
    total = sum(m.numel() for m in method.masks.values())
    assert kept / total == density
    dense, key = copy.deepcopy(model), copy.deepcopy(method.momentum_model)
    pruned = pruned_copy(model, method.masks)
    queue = method.queue.clone()
    calls, key_calls = [], []
    recording_forward(model, calls)
    recording_forward(method.momentum_model, key_calls)
    v1, v2 = views(dtype=F64)
    loss = method.loss(model, v1, v2)
    # online: view 1 dense (branch 0, no mask), view 2 pruned (branch 1, the mask)
    assert [(b, m is method.masks) for b, m in calls] == [(0, False), (1, True)]
    assert calls[0][1] is None
    assert key_calls == [(0, None)]  # the momentum encoder runs dense
    with torch.no_grad():
        k1, k2 = F.normalize(key(torch.cat([v1, v2]), branch=0), dim=1).chunk(2)
        q1 = F.normalize(dense(v1, branch=0), dim=1)
        q2 = F.normalize(pruned(v2, branch=1), dim=1)
        q2_dense = F.normalize(dense(v2, branch=1), dim=1)
    ref = reference_infonce(q1, k2, queue, 0.2) + reference_infonce(q2, k1, queue, 0.2)
    assert_close64(loss, ref, what="loss")
    dense_ref = reference_infonce(q1, k2, queue, 0.2) + reference_infonce(q2_dense, k1, queue, 0.2)
    assert not torch.allclose(loss, dense_ref, atol=1e-3)
    # the pruned branch's gradient reaches the shared dense weights and BN copy 1
    loss.backward()
    bn1 = [p for n, p in model.named_parameters() if ".bn.1." in n]
    assert bn1 and all(p.grad is not None and p.grad.abs().sum() > 0 for p in bn1)


@pytest.mark.numerics
def test_pruned_byol_uses_the_pruned_branch_and_dense_target():
    model = small_model(dual_bn=True, dtype=F64)
    method = BYOL(hidden_dim=32, prune_ratio=0.9, dual_bn=True)
    method.on_epoch_start(model)
    method.setup(model)
    target, predictor = copy.deepcopy(method.target), copy.deepcopy(method.predictor)
    dense, pruned = copy.deepcopy(model), pruned_copy(model, method.masks)
    calls = []
    recording_forward(model, calls)
    v1, v2 = views(dtype=F64)
    loss = method.loss(model, v1, v2)
    assert [(b, m is method.masks) for b, m in calls] == [(0, False), (1, True)]
    with torch.no_grad():
        t1, t2 = target(torch.cat([v1, v2])).chunk(2)
        p1 = predictor(dense(v1, branch=0))
        set_bn_branch(predictor, 1)
        p2 = predictor(pruned(v2, branch=1))
    ref = byol_loss(p1, t2) + byol_loss(p2, t1)
    assert_close64(loss, ref, what="loss")


@pytest.mark.numerics
def test_mochi_adds_the_expected_negatives_without_gradient():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 6, generator=g, dtype=F64), dim=1).requires_grad_()
    k = F.normalize(torch.randn(4, 6, generator=g, dtype=F64), dim=1)
    queue = F.normalize(torch.randn(20, 6, generator=g, dtype=F64), dim=1)
    mochi = {"N": 5, "s": 7, "s_prime": 3}
    h = mochi_negatives(q, q @ queue.t(), queue, mochi, torch.Generator().manual_seed(1))
    assert h.shape == (4, 10, 6) and not h.requires_grad
    assert_close64(h.norm(dim=2), torch.ones(4, 10, dtype=F64), what="norms")
    # pair mixtures lie in the span of the query's 5 hardest negatives
    hard = (q @ queue.t()).topk(5, dim=1).indices
    for i in range(4):
        basis = queue[hard[i]].t()  # [6, 5]
        sol = torch.linalg.lstsq(basis, h[i, :7].t().detach()).solution
        assert_close64(basis @ sol, h[i, :7].t(), what=f"query {i}: in the span")
    logits = moco_logits(q, k, queue, 0.2, mochi, torch.Generator().manual_seed(1))
    assert logits.shape == (4, 1 + 20 + 10)
    assert_close64(logits[:, :21], moco_logits(q, k, queue, 0.2), what="queue logits")
    loss = info_nce(logits)
    assert torch.isfinite(loss) and loss > info_nce(moco_logits(q, k, queue, 0.2))
    loss.backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # inside the method, with the default sizes clipped to the queue
    model = small_model(dual_bn=False)
    method = MoCo(queue_size=32, mochi={"N": 8, "s": 16, "s_prime": 4})
    loss = method.loss(model, *views())
    assert torch.isfinite(loss)
    loss.backward()
    with pytest.raises(ConfigError, match="unknown"):
        MoCo(mochi={"n_hard": 3})


def test_pruned_moco_needs_the_symmetric_loss():
    with pytest.raises(ConfigError, match="symmetric"):
        MoCo(prune_ratio=0.9, symmetric=False)


def test_byol_loss_is_zero_for_identical_online_and_target():
    model = small_model(dual_bn=False)
    method = BYOL(hidden_dim=32)
    method.setup(model)
    method.predictor = nn.Identity()
    v1, _ = views()
    for train in (True, False):
        model.train(train)
        loss = method.loss(model, v1, v1.clone())
        assert abs(loss.item()) < 1e-5
    model.train()
    assert method.loss(model, *views()) > 0.1
    # the formula on a constructed case: orthogonal -> 2, opposite -> 4, per direction
    e = torch.eye(3)
    assert torch.allclose(byol_loss(e[:2], e[:2] * 5), torch.tensor(0.0))
    assert torch.allclose(byol_loss(e[:2], e[1:3]), torch.tensor(2.0))
    assert torch.allclose(byol_loss(e[:2], -e[:2]), torch.tensor(4.0))


def test_byol_extra_parameters_need_setup():
    method = BYOL(hidden_dim=32)
    with pytest.raises(RuntimeError, match="setup"):
        method.extra_parameters()
    method.setup(small_model(dual_bn=False))
    assert method.extra_parameters() == list(method.predictor.parameters())
    assert MoCo().extra_parameters() == []


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("kind", ["moco", "byol"])
def test_state_dict_round_trip_restores_the_momentum_state(kind):
    model = small_model(dual_bn=True)
    method = make(kind, 0.9, cosine_momentum=True) if kind == "moco" else make(kind, 0.9)
    method.on_epoch_start(model)
    method.setup(model)
    opt = torch.optim.SGD(list(model.parameters()) + method.extra_parameters(), lr=0.5)
    for step in range(3):
        method.set_progress(step / 10)
        loss = method.loss(model, *views(seed=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        method.after_step(model)
    state = roundtrip(method.state_dict())
    # load before setup (pending, applied when the momentum copy is created) and after
    for load_first in (True, False):
        fresh = make(kind, 0.9)
        other = small_model(dual_bn=True, seed=7)
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
