"""The contrastive model (sdclr.models.contrastive): the pruned branch, dual BN, and the
fused pass of both branches (equal to the two passes, under torch.compile too, and refused
where it cannot keep them apart)."""

from __future__ import annotations

import copy

import pytest
import torch
from numerics import assert_close64, max_abs
from tiny import CHANNELS, small_model, views
from torch import nn

from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.backbone import DualBatchNorm
from sdclr.models.contrastive import build_model


@pytest.mark.numerics
def test_pruned_branch_is_the_masked_network_with_the_second_bn():
    model = small_model(dual_bn=True, dtype=torch.float64)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(model)
    x, _ = views(dtype=torch.float64)
    out = model(x, branch=1, masks=method.masks)
    # reference: a copy whose conv weights are zeroed by the mask, BN copy 1 in every layer
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        for name, mask in method.masks.items():
            dict(pruned.backbone.named_parameters())[name].mul_(mask)
    ref = pruned(x, branch=1)
    assert_close64(out, ref, what="pruned branch")
    # and the dense model itself is untouched: the dense branch still differs
    assert not torch.allclose(model(x, branch=0), ref, atol=1e-3)


@pytest.mark.parametrize(
    "backbone,stem,size,ratio,channels_last",
    [
        ("resnet18", True, 32, 0.9, False),
        ("resnet18", True, 32, None, True),  # dual BN without a mask; channels_last input
        # bottlenecks, 7x7 stem and max-pool (a milder ratio: at this width a 0.7 pruned
        # branch is nearly constant over the batch and its gradients are rounding noise)
        ("resnet50", False, 64, 0.3, False),
    ],
)
@pytest.mark.numerics
def test_fused_pass_equals_the_two_separate_branches(backbone, stem, size, ratio, channels_last):
    """fuse_branches: the grouped-conv pass gives the same loss, gradients and BN running
    statistics as the dense and pruned passes run one after the other, and leaves the model
    as it found it (groups, BN branch). In float64 (tests/numerics.py): in float32 the
    gradients of the grouped convolutions are about 1e-2 off on some CPUs' oneDNN kernels."""
    from sdclr.models.contrastive import check_fusable

    torch.manual_seed(0)
    separate = build_model(backbone, stem, CHANNELS, 3, 16, dual_bn=True).double()
    fused = copy.deepcopy(separate)
    check_fusable(fused)
    g = torch.Generator().manual_seed(2)
    v1, v2 = (torch.randn(16, 3, size, size, generator=g, dtype=torch.float64) for _ in range(2))
    if channels_last:
        for m in (separate, fused):
            m.to(memory_format=torch.channels_last)
        v1, v2 = (v.contiguous(memory_format=torch.channels_last) for v in (v1, v2))
    losses = []
    for model, fuse in ((separate, False), (fused, True)):
        method = ContrastiveMethod(0.2, ratio, dual_bn=True, fuse_branches=fuse)
        method.setup(model)
        method.on_epoch_start(model)
        model.train()
        loss = method.loss(model, v1, v2)
        loss.backward()
        losses.append(loss.detach())
    assert_close64(losses[1], losses[0], what="loss")
    grads = dict(separate.named_parameters())
    # relative to the largest gradient: the first head layer's bias feeds a batch norm, so
    # its true gradient is 0 and the computed one rounding noise
    scale = max_abs(p.grad for p in separate.parameters() if p.grad is not None)
    for name, p in fused.named_parameters():
        assert (p.grad is None) == (grads[name].grad is None), name
        if p.grad is not None:
            assert_close64(p.grad, grads[name].grad, scale, name)
    buffers = dict(separate.named_buffers())
    for name, b in fused.named_buffers():
        assert_close64(b.double(), buffers[name].double(), what=name)
    assert all(m.groups == 1 for m in fused.modules() if isinstance(m, nn.Conv2d))
    assert all(m.branch == 0 for m in fused.modules() if isinstance(m, DualBatchNorm))


def test_fused_pass_on_a_cpu_warns_in_float32_only():
    """fuse_branches is a CUDA speed option: in float32 on a CPU its grouped convolutions'
    oneDNN backward may be inexact, which setup says; float64 is exact and stays quiet."""
    import warnings

    from sdclr.models.contrastive import FUSED_ON_CPU

    method = ContrastiveMethod(0.2, 0.9, dual_bn=True, fuse_branches=True)
    with pytest.warns(UserWarning) as record:
        method.setup(small_model(dual_bn=True))
    assert [str(w.message) for w in record] == [FUSED_ON_CPU]
    assert "1e-2" in FUSED_ON_CPU and "fuse_branches=false" in FUSED_ON_CPU
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        method.setup(small_model(dual_bn=True, dtype=torch.float64))
        ContrastiveMethod(0.2, 0.9, dual_bn=True).setup(small_model(dual_bn=True))


@pytest.mark.numerics
def test_compiled_model_switches_between_fused_and_separate_passes():
    """Under torch.compile (dynamo with its eager backend: the guards, not inductor, are what
    is tested), the fused pass's temporary conv groups and BN branch must select their own
    graphs: dense, pruned, fused, then dense again all match the uncompiled model."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager = small_model(dual_bn=True, dtype=torch.float64)
    compiled = copy.deepcopy(eager)
    compiled.backbone.compile(backend="eager")
    compiled.head.compile(backend="eager")
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(eager)
    v1, v2 = views(dtype=torch.float64)
    outs = []
    try:
        for model in (eager, compiled):
            model.train()
            outs.append(
                [
                    model(v1, branch=0),
                    model(v2, branch=1, masks=method.masks),
                    *model.forward_pair(v1, v2, method.masks),
                    model(v1, branch=0),
                ]
            )
        graphs = counters["stats"]["unique_graphs"]
        gave_up = [r for r in counters["unimplemented"] if "recompile" in str(r).lower()]
    finally:
        torch._dynamo.reset()
    assert graphs >= 4 and not gave_up  # dense, pruned, fused (+ head): really compiled
    for i, (a, b) in enumerate(zip(*outs)):
        assert_close64(b, a, what=f"call {i}")


def test_fused_pass_leaves_the_model_as_found_when_it_fails():
    model = small_model(dual_bn=True)
    v1, v2 = views()

    layer, calls = model.head[3], []

    def broken(x):  # the head's second call: the pruned branch, BN copy 1 selected
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return nn.Linear.forward(layer, x)

    layer.forward = broken
    with pytest.raises(RuntimeError, match="boom"):
        model.forward_pair(v1, v2)
    assert len(calls) == 2
    assert all(m.groups == 1 for m in model.modules() if isinstance(m, nn.Conv2d))
    assert all(m.branch == 0 for m in model.modules() if isinstance(m, DualBatchNorm))


def test_fused_pass_refuses_what_it_cannot_keep_apart():
    from timm.layers import SelectAdaptivePool2d

    from sdclr.errors import ConfigError
    from sdclr.models.contrastive import check_fusable

    with pytest.raises(ConfigError, match="fuse_branches.*dual BN"):
        check_fusable(small_model(dual_bn=False))
    concat = small_model(dual_bn=True)  # avg and max features side by side mix the halves
    concat.backbone.global_pool = SelectAdaptivePool2d(pool_type="catavgmax", flatten=True)
    with pytest.raises(ConfigError, match="global_pool.*mix channels"):
        ContrastiveMethod(0.2, 0.9, dual_bn=True, fuse_branches=True).setup(concat)
    no_momentum = small_model(dual_bn=True)  # a cumulative-average BN copy
    no_momentum.backbone.layer2[0].bn1.bn[1].momentum = None
    with pytest.raises(ConfigError, match=r"'layer2\.0\.bn1' lacks"):
        check_fusable(no_momentum)
    mixing = small_model(dual_bn=True)
    mixing.backbone.layer1[0].act1 = nn.LayerNorm(8)
    with pytest.raises(ConfigError, match=r"'layer1\.0\.act1' \(LayerNorm\)"):
        check_fusable(mixing)


def test_each_branch_updates_only_its_own_bn_statistics():
    model = small_model(dual_bn=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    assert len(bns) > 10 and any(isinstance(m.bn[0], nn.BatchNorm1d) for m in bns)  # head too
    x, _ = views()

    def stats():
        return [(m.bn[0].running_mean.clone(), m.bn[1].running_mean.clone()) for m in bns]

    before = stats()
    model(x, branch=0)
    after_dense = stats()
    assert all(not torch.equal(b[0], a[0]) for b, a in zip(before, after_dense))
    assert all(torch.equal(b[1], a[1]) for b, a in zip(before, after_dense))
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(model)
    model(x, branch=1, masks=method.masks)
    after_pruned = stats()
    assert all(torch.equal(a[0], p[0]) for a, p in zip(after_dense, after_pruned))
    assert all(not torch.equal(a[1], p[1]) for a, p in zip(after_dense, after_pruned))
