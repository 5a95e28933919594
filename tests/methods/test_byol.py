"""BYOL (sdclr.methods.byol): the pruned branch against a dense target, the loss of identical
online and target networks, the predictor's parameters after setup."""

from __future__ import annotations

import copy

import pytest
import torch
from numerics import assert_close64
from tiny import F64, moco_byol_model, moco_byol_views, pruned_copy, recording_forward
from torch import nn

from sdclr.losses.byol import byol_loss
from sdclr.methods.byol import BYOL
from sdclr.methods.moco import MoCo
from sdclr.models.backbone import set_bn_branch


@pytest.mark.numerics
def test_pruned_byol_uses_the_pruned_branch_and_dense_target():
    model = moco_byol_model(dual_bn=True, dtype=F64)
    method = BYOL(hidden_dim=32, prune_ratio=0.9, dual_bn=True)
    method.on_epoch_start(model)
    method.setup(model)
    target, predictor = copy.deepcopy(method.target), copy.deepcopy(method.predictor)
    dense, pruned = copy.deepcopy(model), pruned_copy(model, method.masks)
    calls = []
    recording_forward(model, calls)
    v1, v2 = moco_byol_views(dtype=F64)
    loss = method.loss(model, v1, v2)
    assert [(b, m is method.masks) for b, m in calls] == [(0, False), (1, True)]
    with torch.no_grad():
        t1, t2 = target(torch.cat([v1, v2])).chunk(2)
        p1 = predictor(dense(v1, branch=0))
        set_bn_branch(predictor, 1)
        p2 = predictor(pruned(v2, branch=1))
    ref = byol_loss(p1, t2) + byol_loss(p2, t1)
    assert_close64(loss, ref, what="loss")


def test_byol_loss_is_zero_for_identical_online_and_target():
    model = moco_byol_model(dual_bn=False)
    method = BYOL(hidden_dim=32)
    method.setup(model)
    method.predictor = nn.Identity()
    v1, _ = moco_byol_views()
    for train in (True, False):
        model.train(train)
        loss = method.loss(model, v1, v1.clone())
        assert abs(loss.item()) < 1e-5
    model.train()
    assert method.loss(model, *moco_byol_views()) > 0.1
    # the formula on a constructed case: orthogonal -> 2, opposite -> 4, per direction
    e = torch.eye(3)
    assert torch.allclose(byol_loss(e[:2], e[:2] * 5), torch.tensor(0.0))
    assert torch.allclose(byol_loss(e[:2], e[1:3]), torch.tensor(2.0))
    assert torch.allclose(byol_loss(e[:2], -e[:2]), torch.tensor(4.0))


def test_byol_extra_parameters_need_setup():
    method = BYOL(hidden_dim=32)
    with pytest.raises(RuntimeError, match="setup"):
        method.extra_parameters()
    method.setup(moco_byol_model(dual_bn=False))
    assert method.extra_parameters() == list(method.predictor.parameters())
    assert MoCo().extra_parameters() == []
