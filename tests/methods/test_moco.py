"""MoCo v2 and MoCHi (sdclr.methods.moco): the queue, prune=none is plain MoCo v2, the pruned
branch and the symmetric loss it needs, the debiased / hard losses over the queue."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64, max_abs
from tiny import (
    F64,
    OUT_DIM,
    images,
    moco_byol_model,
    moco_byol_views,
    pruned_copy,
    recording_forward,
    reference_infonce,
    tiny_cfg,
    tiny_model,
)

from sdclr.config.derived import method_label
from sdclr.errors import ConfigError
from sdclr.methods.moco import MoCo
from sdclr.methods.registry import build_method


def test_queue_pointer_content_and_wraparound():
    model = moco_byol_model(dual_bn=False)
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
def test_prune_none_is_plain_moco_v2():
    model = moco_byol_model(dual_bn=False, dtype=F64)
    method = MoCo(temperature=0.2, queue_size=32, generator=torch.Generator().manual_seed(0))
    method.setup(model)
    online, key = copy.deepcopy(model), copy.deepcopy(model)
    queue = method.queue.clone()
    assert queue.dtype == F64  # the queue takes the model's dtype
    v1, v2 = moco_byol_views(dtype=F64)
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
    model2 = moco_byol_model(dual_bn=False, dtype=F64)
    asym.setup(model2)
    q_ref, k_ref, queue2 = copy.deepcopy(model2), copy.deepcopy(model2), asym.queue.clone()
    loss2 = asym.loss(model2, v1, v2)
    with torch.no_grad():
        k2 = F.normalize(k_ref(v2), dim=1)
        ref2 = reference_infonce(F.normalize(q_ref(v1), dim=1), k2, queue2, 0.2)
    assert_close64(loss2, ref2, what="asymmetric loss")
    assert asym.queue_ptr == 8
    assert_close64(asym.queue[:8], k2, what="asymmetric enqueued keys")


@pytest.mark.numerics
def test_pruned_moco_queries_view_two_through_the_pruned_branch():
    model = moco_byol_model(dual_bn=True, dtype=F64)
    method = MoCo(queue_size=32, prune_ratio=0.9, dual_bn=True)
    with pytest.raises(RuntimeError, match="on_epoch_start"):
        method.loss(model, *moco_byol_views())
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
    v1, v2 = moco_byol_views(dtype=F64)
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


def test_pruned_moco_needs_the_symmetric_loss():
    with pytest.raises(ConfigError, match="symmetric"):
        MoCo(prune_ratio=0.9, symmetric=False)


@pytest.mark.numerics
def test_moco_losses_reduce_exactly_and_train():
    """MoCo with the debiased / hard estimator over its queue: tau+=0 is InfoNCE, beta=0 is
    the debiased loss; a step with loss=hard runs through the factory."""
    from sdclr.losses.contrastive import debiased_from_logits

    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 33, generator=g, dtype=torch.float64).clamp(-1, 1) / 0.2
    ce = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long), reduction="none")
    plain = debiased_from_logits(logits[:, 0], logits[:, 1:], 0.2, 0.0, 0.0)
    assert torch.allclose(plain, ce, atol=1e-12, rtol=0)

    v1, v2 = images(8, 1).double() / 255, images(8, 2).double() / 255
    losses = {}
    for name, extra in (
        ("ntxent", []),
        ("debiased0", ["loss=debiased", "loss.tau_plus=0.0"]),
        ("debiased", ["loss=debiased", "loss.tau_plus=0.1"]),
        ("hard0", ["loss=hard", "loss.tau_plus=0.1", "loss.beta=0.0"]),
        ("hard", ["loss=hard", "loss.tau_plus=0.1", "loss.beta=1.0"]),
    ):
        c = tiny_cfg("method=moco", "prune=none", "method.queue_size=64", *extra)
        model = tiny_model(c, dtype=torch.float64)
        method = build_method(c, torch.Generator().manual_seed(0))
        method.setup(model)
        losses[name] = method.loss(model, v1, v2).detach()
    assert_close64(losses["debiased0"], losses["ntxent"], what="tau+ 0")
    assert_close64(losses["hard0"], losses["debiased"], what="beta 0")
    assert not torch.allclose(losses["hard"], losses["debiased"])
    assert "hard(tau+=0.1,beta=1)" in method_label(c)
