"""MoCo's loss (sdclr.losses.moco): the logits against a hand-computed InfoNCE, and MoCHi's
mixed hard negatives."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64
from tiny import F64, moco_byol_model, moco_byol_views, reference_infonce

from sdclr.errors import ConfigError
from sdclr.losses.moco import info_nce, mochi_negatives, moco_logits
from sdclr.methods.moco import MoCo


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
    model = moco_byol_model(dual_bn=False)
    method = MoCo(queue_size=32, mochi={"N": 8, "s": 16, "s_prime": 4})
    loss = method.loss(model, *moco_byol_views())
    assert torch.isfinite(loss)
    loss.backward()
    with pytest.raises(ConfigError, match="unknown"):
        MoCo(mochi={"n_hard": 3})
