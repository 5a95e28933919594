"""Contrastive losses (sdclr.losses.contrastive): NT-Xent against the written-out formula and
across ranks (gloo, 2 CPU processes: negatives span the global batch, gradients equal one
process's, in float64: tests/numerics.py), the debiased and hard-negative losses and their
reductions to NT-Xent."""

from __future__ import annotations

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from numerics import assert_close64
from ranks import free_port, nt_xent_worker
from tiny import reference_nt_xent

import sdclr.losses.contrastive as loss_mod
from sdclr.losses.contrastive import contrastive_loss, debiased_nt_xent, hard_nt_xent, nt_xent


def features(b=6, d=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype)


def reference_debiased(z1, z2, t, tau_plus, beta=0.0):
    """Per-anchor debiased/hard loss with explicit Python loops in float64, plus whether the
    M*exp(-1/t) clamp was active for each anchor."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1).tolist()
    n = len(z) // 2
    m = 2 * n - 2
    losses, clamped = [], []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        sim = [sum(x * y for x, y in zip(z[a], z[j])) for j in range(2 * n)]
        pos = math.exp(sim[p] / t)
        negs = [math.exp(sim[j] / t) for j in range(2 * n) if j not in (a, p)]
        imp = [math.exp(beta * sim[j] / t) for j in range(2 * n) if j not in (a, p)]
        reweighted = m * sum(w * e for w, e in zip(imp, negs)) / sum(imp)
        ng = (reweighted - m * tau_plus * pos) / (1 - tau_plus)
        bound = m * math.exp(-1 / t)
        clamped.append(ng < bound)
        ng = max(ng, bound)
        losses.append(-math.log(pos / (pos + ng)))
    return torch.tensor(losses, dtype=torch.float64), clamped


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_tau_plus_zero_is_nt_xent(t):
    z1, z2 = features()
    for reduction in ("mean", "none"):
        ref = nt_xent(z1, z2, t, reduction=reduction)
        assert torch.allclose(debiased_nt_xent(z1, z2, t, 0.0, reduction), ref, atol=1e-12)
    z1, z2 = z1.float(), z2.float()
    assert torch.allclose(debiased_nt_xent(z1, z2, t, 0.0), nt_xent(z1, z2, t), atol=1e-6)


@pytest.mark.parametrize("tau_plus", [0.0, 0.1, 0.5])
def test_beta_zero_is_debiased(tau_plus):
    z1, z2 = features(seed=1)
    for reduction in ("mean", "none"):
        assert torch.equal(
            hard_nt_xent(z1, z2, 0.2, tau_plus, 0.0, reduction),
            debiased_nt_xent(z1, z2, 0.2, tau_plus, reduction),
        )


@pytest.mark.parametrize("kind", ["ntxent", "debiased", "hard"])
def test_reduction_none_averages_to_mean(kind):
    z1, z2 = features(seed=2)
    per_anchor = contrastive_loss(z1, z2, 0.2, kind, 0.1, 1.0, reduction="none")
    assert per_anchor.shape == (12,)
    mean = contrastive_loss(z1, z2, 0.2, kind, 0.1, 1.0)
    assert torch.allclose(per_anchor.mean(), mean, atol=1e-12)


def test_nt_xent_mean_is_unchanged_in_float32():
    z1, z2 = features(seed=3, dtype=torch.float32)
    logits = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = logits @ logits.t() / 0.2
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(6, 12), torch.arange(6)])
    assert torch.equal(nt_xent(z1, z2, 0.2), F.cross_entropy(logits, target))
    with pytest.raises(ValueError, match="reduction"):
        nt_xent(z1, z2, 0.2, reduction="sum")


def test_debiased_matches_the_hand_computed_formula():
    # B=2: each anchor has M=2 negatives
    z1 = torch.tensor([[1.0, 0.2, 0.0], [0.1, 1.0, 0.3]], dtype=torch.float64)
    z2 = torch.tensor([[0.9, 0.4, 0.1], [-0.2, 0.8, 0.5]], dtype=torch.float64)
    for t, tau_plus in [(0.5, 0.1), (0.2, 0.05), (1.0, 0.3)]:
        ref, clamped = reference_debiased(z1, z2, t, tau_plus)
        out = debiased_nt_xent(z1, z2, t, tau_plus, reduction="none")
        assert torch.allclose(out, ref, atol=1e-12), (t, tau_plus)


def test_debiased_clamp_is_active_for_a_large_class_prior():
    # identical views and orthogonal negatives: the debiased sum goes negative and is clamped
    z = torch.eye(2, 3, dtype=torch.float64)
    ref, clamped = reference_debiased(z, z, 0.5, 0.9)
    assert all(clamped)
    out = debiased_nt_xent(z, z, 0.5, 0.9, reduction="none")
    assert torch.allclose(out, ref, atol=1e-12)
    # at the clamp Ng = M exp(-1/t): loss = log(1 + M exp(-2/t)) with s+ = 1
    assert torch.allclose(out, torch.full((4,), math.log1p(2 * math.exp(-4.0))).double())
    # a mix of clamped and unclamped anchors
    z2 = torch.tensor([[1.0, 0.1, 0.0], [0.3, 0.5, 1.0]], dtype=torch.float64)
    ref, clamped = reference_debiased(z, z2, 0.5, 0.4)
    assert any(clamped) and not all(clamped)
    assert torch.allclose(debiased_nt_xent(z, z2, 0.5, 0.4, reduction="none"), ref, atol=1e-12)


def test_hard_matches_the_hand_computed_formula():
    z1, z2 = features(b=3, d=4, seed=4)
    for beta in (0.5, 1.0, 3.0):
        ref, _ = reference_debiased(z1, z2, 0.3, 0.1, beta)
        out = hard_nt_xent(z1, z2, 0.3, 0.1, beta, reduction="none")
        assert torch.allclose(out, ref, atol=1e-12), beta


def test_hard_weights_harder_negatives_more():
    # anchor 0's negatives: one close to it (hard), the others far (easy)
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    deb = debiased_nt_xent(z1, z2, 0.5, 0.1, reduction="none")
    previous = deb
    for beta in (0.5, 1.0, 2.0):
        hard = hard_nt_xent(z1, z2, 0.5, 0.1, beta, reduction="none")
        assert (hard >= previous - 1e-12).all() and hard[0] > previous[0] + 1e-3, beta
        previous = hard
    # with equally similar negatives the weights are uniform and change nothing
    z = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(hard_nt_xent(z, z, 0.5, 0.1, 2.0), debiased_nt_xent(z, z, 0.5, 0.1))


@pytest.mark.parametrize("kind", ["ntxent", "debiased", "hard"])
@pytest.mark.parametrize("t", [0.01, 0.2])
def test_gradients_are_finite(kind, t):
    z1, z2 = features(seed=5, dtype=torch.float32)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    loss = contrastive_loss(z1, z2, t, kind, tau_plus=0.1, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()
    assert z1.grad.abs().sum() > 0
    # including anchors whose debiased sum is clamped
    z = torch.eye(4, 5).requires_grad_(True)
    loss = contrastive_loss(z, z.detach() + 0.01, t, kind, tau_plus=0.9, beta=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("kind", ["ntxent", "debiased", "hard"])
def test_ranks_see_the_global_batch(monkeypatch, kind):
    """Each rank's anchors against every rank's keys, as nt_xent does: simulate rank r of 2 by
    gathering its local features into the full batch, and compare with one process."""
    z1, z2 = features(b=8, seed=6)
    full = contrastive_loss(z1, z2, 0.2, kind, 0.1, 1.0, reduction="none")
    n1, n2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    for r in range(2):
        sl = slice(4 * r, 4 * r + 4)

        def gather(x, sl=sl):
            whole = n1 if torch.allclose(x, n1[sl]) else n2
            return torch.cat([whole[: sl.start], x, whole[sl.stop :]])

        monkeypatch.setattr(loss_mod, "gather_with_grad", gather)
        monkeypatch.setattr(loss_mod, "rank", lambda r=r: r)
        local = contrastive_loss(z1[sl], z2[sl], 0.2, kind, 0.1, 1.0, reduction="none")
        expected = torch.cat([full[sl], full[8 + sl.start : 8 + sl.stop]])
        assert torch.allclose(local, expected, atol=1e-12), r


def test_unknown_kind_and_bad_arguments_raise():
    z1, z2 = features()
    with pytest.raises(ValueError, match="kind"):
        contrastive_loss(z1, z2, 0.2, kind="infonce")
    with pytest.raises(ValueError, match="tau_plus"):
        debiased_nt_xent(z1, z2, 0.2, 1.0)
    with pytest.raises(ValueError, match="reduction"):
        hard_nt_xent(z1, z2, 0.2, 0.1, 1.0, reduction="sum")


def test_logits_stay_float32_inside_a_bf16_step():
    """The step runs under bf16 autocast on CUDA; the similarities / temperature are still
    computed in float32 (here on CPU autocast, which lowers matmuls the same way)."""
    from sdclr.losses.contrastive import contrastive_loss
    from sdclr.losses.moco import moco_logits

    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    queue = F.normalize(torch.randn(64, 32, generator=g), dim=1)
    plain = {k: contrastive_loss(z1, z2, 0.2, k) for k in ("ntxent", "debiased", "hard")}
    plain_moco = moco_logits(F.normalize(z1, dim=1), F.normalize(z2, dim=1), queue, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kind, value in plain.items():
            assert torch.equal(contrastive_loss(z1, z2, 0.2, kind), value)
        mixed = moco_logits(F.normalize(z1, dim=1), F.normalize(z2, dim=1), queue, 0.2)
        assert mixed.dtype == torch.float32 and torch.equal(mixed, plain_moco)


@pytest.mark.numerics
def test_nt_xent_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    for t in (0.2, 0.5):
        assert_close64(nt_xent(z1, z2, t), reference_nt_xent(z1, z2, t), what=f"t={t}")
    # identical views with orthogonal negatives give a lower loss than random ones
    same = torch.eye(6, 5 + 1)[:, :5] * 10
    assert nt_xent(same, same, 0.2) < nt_xent(z1, z2, 0.2)


@pytest.mark.numerics
def test_global_negatives_and_gradients_match_a_single_process():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(2))
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(nt_xent_worker, args=(2, free_port(), z1, z2, out), nprocs=2, join=True)

    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.2)
    loss.backward()
    assert_close64(out["loss"], loss.detach(), what="loss")
    for rank in range(2):
        sl = slice(4 * rank, 4 * rank + 4)
        expected = torch.cat([a.grad[sl], b.grad[sl]])
        assert_close64(out["grads"][rank], expected, what=f"rank {rank}")
    # and a local-only loss (no gathered negatives) would differ
    assert not torch.allclose(nt_xent(z1[:4], z2[:4], 0.2), loss.detach(), atol=1e-3)
