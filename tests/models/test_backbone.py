"""The branch convolutions (sdclr.models.backbone.BranchConv2d): each branch is the plain
convolution it stands for, in float64 (tests/numerics.py); the state dict is timm's; the mask
buffer is bound, never copied; and the unit-stride form of a strided 1x1 conv, the workaround
of a oneDNN crash, gives the same values and survives the case that crashed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64
from torch import nn

from sdclr.models.backbone import (
    DENSE,
    PAIR,
    PRUNED,
    BranchConv2d,
    convert_branch_convs,
    create_backbone,
    set_conv_masks,
    use_unit_stride_pointwise,
)

F64 = torch.float64


def _conv(cin=4, cout=6, k=3, stride=1, padding=1, groups=1, bias=True, padding_mode="zeros"):
    torch.manual_seed(0)
    conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias).to(F64)
    conv.padding_mode = padding_mode
    plain = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=bias).to(F64)
    plain.padding_mode = padding_mode
    plain.load_state_dict(conv.state_dict())
    convert_branch_convs(conv)
    return conv, plain


def _grads(module, x):
    x = x.clone().requires_grad_(True)
    out = module(x)
    out.backward(torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out))
    return out, x.grad, {n: p.grad for n, p in module.named_parameters()}


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_each_branch_is_the_convolution_it_stands_for(padding_mode):
    conv, plain = _conv(padding_mode=padding_mode)
    assert isinstance(conv, BranchConv2d) and set(conv.state_dict()) == {"weight", "bias"}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 9, 9, generator=g, dtype=F64)
    mask = (torch.rand(conv.weight.shape, generator=g) > 0.5).to(F64)
    set_conv_masks(conv, {".weight": mask})  # a lone conv's own name is ""
    assert conv.mask is mask  # bound, not copied

    conv.branch = DENSE
    assert_close64(conv(x), plain(x), what="dense")
    conv.branch = PRUNED
    with torch.no_grad():
        masked = plain.weight * mask
    out, gx, gp = _grads(conv, x)
    ref = F.conv2d(
        F.pad(x, plain._reversed_padding_repeated_twice, mode=padding_mode)
        if padding_mode != "zeros"
        else x,
        masked,
        plain.bias,
        1,
        0 if padding_mode != "zeros" else 1,
    )
    assert_close64(out, ref, what="pruned output")
    # the same as a plain conv whose weight is w * m, the weight gradient times m
    conv.branch = DENSE
    with torch.no_grad():
        plain.weight.mul_(mask)
    _, ref_gx, ref_gp = _grads(plain, x)
    assert_close64(gx, ref_gx, what="input gradient")
    assert_close64(gp["weight"], ref_gp["weight"] * mask, what="weight gradient")
    assert_close64(gp["bias"], ref_gp["bias"], what="bias gradient")


def test_the_pair_branch_runs_both_branches_side_by_side():
    conv, plain = _conv(groups=2)
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(conv.weight.shape, generator=g) > 0.5).to(F64)
    x1, x2 = (torch.randn(2, 4, 7, 7, generator=g, dtype=F64) for _ in range(2))
    set_conv_masks(conv, {".weight": mask})
    conv.branch = PAIR
    both = conv(torch.cat([x1, x2], dim=1))
    conv.branch = DENSE
    dense = conv(x1)
    conv.branch = PRUNED
    pruned = conv(x2)
    assert_close64(both, torch.cat([dense, pruned], dim=1), what="fused pair")


def test_the_masks_are_unbound_and_left_out_of_every_state_dict():
    backbone = create_backbone("resnet18", True, [8, 16, 32, 64])
    keys = set(backbone.state_dict())
    convert_branch_convs(backbone)
    assert set(backbone.state_dict()) == keys  # what checkpoints and exports hold
    masks = {
        f"{n}.weight": torch.ones_like(m.weight)
        for n, m in backbone.named_modules()
        if isinstance(m, nn.Conv2d)
    }
    set_conv_masks(backbone, masks)
    assert set(backbone.state_dict()) == keys
    assert backbone.conv1.mask is masks["conv1.weight"]
    set_conv_masks(backbone, None)
    assert all(m.mask is None for m in backbone.modules() if isinstance(m, BranchConv2d))


@pytest.mark.parametrize("stride", [2, 3])
def test_a_strided_pointwise_conv_at_unit_stride_gives_the_same_values(stride):
    """Odd and even sizes: a 1x1 unpadded kernel at stride s reads exactly every s-th pixel."""
    for size in (7, 8):
        conv, plain = _conv(cin=8, cout=16, k=1, stride=stride, padding=0, bias=False)
        x = torch.randn(3, 8, size, size, generator=torch.Generator().manual_seed(size), dtype=F64)
        assert use_unit_stride_pointwise(conv) == 1 and conv.unit_stride
        out, gx, gp = _grads(conv, x)
        ref, ref_gx, ref_gp = _grads(plain, x)
        assert_close64(out, ref, what="output")
        assert_close64(gx, ref_gx, what="input gradient")
        assert_close64(gp["weight"], ref_gp["weight"], what="weight gradient")


def test_only_strided_pointwise_convs_switch_to_unit_stride():
    backbone = convert_branch_convs(create_backbone("resnet18", True, [8, 16, 32, 64]))
    switched = use_unit_stride_pointwise(backbone)
    names = [n for n, m in backbone.named_modules() if getattr(m, "unit_stride", False)]
    assert switched == 3 and names == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]


# The case that crashed (scripts/onednn_strided_pointwise_crash.py): the suite's narrow
# ResNet-18 (8 channels into the first shortcut), channels_last, an odd batch, two threads;
# float32, and bf16 on oneDNN's AVX512_CORE kernels (AMD EPYC's), where bf16 crashed too.
_STEP = textwrap.dedent(
    """
    import torch
    from sdclr.models.contrastive import build_model
    from sdclr.methods.simclr import ContrastiveMethod
    from sdclr.train.step import prepare_model, train_step
    from sdclr.utils.precision import StepSettings

    for amp in (None, torch.bfloat16):
        torch.manual_seed(0)
        model = build_model("resnet18", True, [8, 16, 32, 64], 3, 16, True)
        settings = StepSettings(amp, channels_last=True)
        prepare_model(model, settings)
        method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
        method.on_epoch_start(model)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for batch in (3, 5, 7):
            v1, v2 = (torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
                      for _ in range(2))
            loss = train_step(model, method, opt, v1, v2, settings)
            assert torch.isfinite(loss), loss
    print("survived")
    """
)


@pytest.mark.parametrize("isa", [None, "AVX512_CORE"])
def test_the_step_that_crashed_runs_with_odd_batches_on_two_threads(isa):
    env = dict(os.environ, OMP_NUM_THREADS="2", MALLOC_CHECK_="3")
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa  # a cap: a CPU without AVX-512 runs its own kernels
    proc = subprocess.run(
        [sys.executable, "-c", _STEP], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "survived" in proc.stdout, (
        f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    )
