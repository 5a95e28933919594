"""SimCLR and SDCLR (sdclr.methods.simclr): prune=none is exactly SimCLR, SDCLR's joint
gradient is the reference two-pass gradient, and the loss options reduce exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from numerics import assert_close64, max_abs
from tiny import CHANNELS, reference_nt_xent, small_model, tiny_cfg, tiny_model, views
from torch import nn

from sdclr.losses.contrastive import nt_xent
from sdclr.methods.registry import build_method
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.backbone import apply_cifar_stem, projection_head


@pytest.mark.numerics
def test_prune_none_is_exactly_simclr():
    """SimCLR reference: a plain timm ResNet + 2-layer head, both views in one batch
    (float64: tests/numerics.py)."""
    import timm

    model = small_model(dual_bn=False, depth=2, dtype=torch.float64)
    torch.manual_seed(5)
    ref_backbone = apply_cifar_stem(
        timm.create_model("resnet18", num_classes=0, channels=tuple(CHANNELS))
    )
    ref = nn.Sequential(ref_backbone, projection_head(ref_backbone.num_features, 2, 16)).double()
    ref.load_state_dict(
        {
            k.replace("backbone.", "0.").replace("head.", "1."): v
            for k, v in model.state_dict().items()
        }
    )
    v1, v2 = views(dtype=torch.float64)
    method = ContrastiveMethod(0.2, prune_ratio=None, dual_bn=False)
    method.on_epoch_start(model)
    loss = method.loss(model, v1, v2)
    loss.backward()
    z = ref(torch.cat([v1, v2]))
    ref_loss = reference_nt_xent(z[:8], z[8:], 0.2)
    ref_loss.backward()
    assert_close64(loss, ref_loss, what="loss")
    ref_grads = dict(ref.named_parameters())
    scale = max_abs(p.grad for p in ref.parameters())
    for name, p in model.named_parameters():
        ref_name = name.replace("backbone.", "0.").replace("head.", "1.")
        assert_close64(p.grad, ref_grads[ref_name].grad, scale, name)


@pytest.mark.numerics
def test_joint_gradient_equals_the_reference_two_pass_gradient():
    base = small_model(dual_bn=True, dtype=torch.float64)
    v1, v2 = views(dtype=torch.float64)
    joint = copy.deepcopy(base)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(joint)
    masks = method.masks
    method.loss(joint, v1, v2).backward()

    # reference (as the original code does it): dense pass with the pruned features
    # detached, pruned pass with the dense features detached, gradients summed
    ref = copy.deepcopy(base)
    z1 = ref(v1, branch=0)
    z2 = ref(v2, branch=1, masks=masks)
    nt_xent(z1, z2.detach(), 0.2).backward()
    nt_xent(z1.detach(), z2, 0.2).backward()
    ref_grads = dict(ref.named_parameters())
    scale = max_abs(p.grad for p in ref.parameters() if p.grad is not None)
    checked = 0
    for name, p in joint.named_parameters():
        g_ref = ref_grads[name].grad
        if p.grad is None:
            assert g_ref is None or torch.count_nonzero(g_ref) == 0
            continue
        assert_close64(p.grad, g_ref, scale, name)
        checked += 1
    assert checked > 20


@pytest.mark.numerics
def test_simclr_losses_in_the_method_reduce_exactly():
    cfg = tiny_cfg("prune=none")
    v1, v2 = torch.randn(
        2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    model = tiny_model(cfg, dtype=torch.float64)
    z1, z2 = model(torch.cat([v1, v2])).chunk(2)
    default = ContrastiveMethod(0.2)
    # the default loss is exactly the NT-Xent the method used before the loss group existed
    assert torch.equal(default.loss(model, v1, v2), nt_xent(z1, z2, 0.2))
    zero_prior = ContrastiveMethod(0.2, loss="debiased", tau_plus=0.0)
    assert_close64(zero_prior.loss(model, v1, v2), nt_xent(z1, z2, 0.2), what="tau+ 0")
    debiased = ContrastiveMethod(0.2, loss="debiased", tau_plus=0.1)
    hard_beta0 = ContrastiveMethod(0.2, loss="hard", tau_plus=0.1, beta=0.0)
    assert torch.equal(debiased.loss(model, v1, v2), hard_beta0.loss(model, v1, v2))
    assert not torch.allclose(debiased.loss(model, v1, v2), default.loss(model, v1, v2))
    # the factory passes loss, tau_plus and beta through
    m = build_method(tiny_cfg("loss=hard", "loss.tau_plus=0.05", "loss.beta=2"))
    assert (m.loss_kind, m.tau_plus, m.beta) == ("hard", 0.05, 2.0)
