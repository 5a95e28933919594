"""Pin SimCLR and SDCLR down: the mask, the branches, the joint gradient, dual BN."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_close64, max_abs
from torch import nn

from sdclr.losses.contrastive import nt_xent
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.backbone import DualBatchNorm, apply_cifar_stem, projection_head
from sdclr.models.contrastive import build_model
from sdclr.models.pruning import conv_weights, magnitude_masks, mask_density

CHANNELS = [8, 16, 32, 64]


def small_model(dual_bn: bool, depth: int = 3, seed: int = 0, dtype=torch.float32):
    torch.manual_seed(seed)
    return build_model("resnet18", True, CHANNELS, depth, 16, dual_bn).to(dtype)


def views(n=8, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, 3, 32, 32, generator=g, dtype=dtype) for _ in range(2))


def reference_nt_xent(z1, z2, t):
    """The loss written out anchor by anchor, independent of sdclr.losses.contrastive."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    total = 0.0
    for a in range(2 * n):
        pos = (a + n) % (2 * n)
        sims = torch.stack([z[a] @ z[j] / t for j in range(2 * n) if j != a])
        pos_sim = z[a] @ z[pos] / t
        total = total - (pos_sim - torch.logsumexp(sims, 0))
    return total / (2 * n)


@pytest.mark.numerics
def test_nt_xent_matches_the_written_out_formula():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(6, 5, generator=g, dtype=torch.float64) for _ in range(2))
    for t in (0.2, 0.5):
        assert_close64(nt_xent(z1, z2, t), reference_nt_xent(z1, z2, t), what=f"t={t}")
    # identical views with orthogonal negatives give a lower loss than random ones
    same = torch.eye(6, 5 + 1)[:, :5] * 10
    assert nt_xent(same, same, 0.2) < nt_xent(z1, z2, 0.2)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.9])
def test_mask_keeps_exactly_one_minus_p_of_the_conv_weights(ratio):
    model = small_model(dual_bn=True)
    named = conv_weights(model.backbone)
    n = sum(w.numel() for _, w in named)
    masks = magnitude_masks([w for _, w in named], ratio)
    kept = sum(int(m.sum()) for m in masks)
    assert kept == n - math.ceil(ratio * n)  # continuous random init: no ties
    assert mask_density(masks) == pytest.approx(1 - ratio, abs=1.0 / n + 1e-12)
    # global threshold: every kept weight is at least as large as every removed one
    mags = torch.cat([w.detach().abs().flatten() for _, w in named])
    keep = torch.cat([m.flatten() for m in masks])
    assert mags[keep].min() >= mags[~keep].max()


def test_mask_covers_every_conv_and_nothing_else():
    model = small_model(dual_bn=True)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    method.on_epoch_start(model)
    convs = {f"{n}.weight" for n, m in model.backbone.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(method.masks) == convs
    # stem, block convs and the 1x1 shortcut convs are all there
    assert "conv1.weight" in convs and any("downsample" in c for c in convs)
    for name, mask in method.masks.items():
        assert mask.shape == dict(model.backbone.named_parameters())[name].shape


def test_random_ratio_removes_the_same_count_with_random_picks():
    model = small_model(dual_bn=True)
    weights = [w for _, w in conv_weights(model.backbone)]
    n = sum(w.numel() for w in weights)
    a = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(0))
    b = magnitude_masks(weights, 0.9, 0.3, torch.Generator().manual_seed(1))
    for masks in (a, b):
        assert sum(int(m.sum()) for m in masks) == n - math.ceil(0.9 * n)
    assert any(not torch.equal(x, y) for x, y in zip(a, b))
    only_random = magnitude_masks(weights, 0.5, 0.5, torch.Generator().manual_seed(0))
    assert sum(int(m.sum()) for m in only_random) == n - math.ceil(0.5 * n)


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


def test_compiling_raises_dynamos_recompile_limit():
    """A run needs more graphs per forward than dynamo's default 8 (branches x grad mode x
    batch shapes); past the limit it would fall back to eager without failing."""
    import torch._dynamo.config as dynamo_config

    from sdclr.train.step import prepare_model
    from sdclr.utils.precision import StepSettings

    before = dynamo_config.recompile_limit
    try:
        dynamo_config.recompile_limit = 8
        prepare_model(small_model(dual_bn=True), StepSettings(compile=True))  # compiles lazily
        assert dynamo_config.recompile_limit >= 32
    finally:
        dynamo_config.recompile_limit = before


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


def test_mask_changes_only_at_epoch_starts():
    """Through the real pretraining loop: record the mask at every step."""
    from omegaconf import OmegaConf

    from sdclr.config.compose import compose_config
    from sdclr.train.loop import pretrain

    cfg = compose_config(
        [
            "pretrain.epochs=3",
            "pretrain.batch_size=8",
            "pretrain.warmup_epochs=1",
            "pretrain.lr=2.0",
            "checkpoint.every=100",
        ]
    )
    model = small_model(dual_bn=True)
    gen = torch.Generator().manual_seed(0)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True, generator=gen)
    seen = []
    original = method.loss

    def recording_loss(m, a, b):
        seen.append((method_epoch[0], {k: v.clone() for k, v in method.masks.items()}))
        return original(m, a, b)

    method_epoch = [0]
    original_start = method.on_epoch_start

    def counting_start(m):
        method_epoch[0] += 1
        return original_start(m)

    method.loss = recording_loss
    method.on_epoch_start = counting_start
    images = torch.randint(0, 256, (24, 3, 32, 32), dtype=torch.uint8)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        result = pretrain(
            cfg, model, method, images, gen, Path(d) / "c.pt", {}, log=None, progress=False
        )
    assert OmegaConf.is_config(cfg) and len(result["mask_density"]) == 3
    assert len(seen) == 9  # 3 epochs x 3 steps
    for epoch in (1, 2, 3):
        masks = [m for e, m in seen if e == epoch]
        assert all(all(torch.equal(masks[0][k], m[k]) for k in m) for m in masks[1:])
    first = [m for e, m in seen if e == 1][0]
    last = [m for e, m in seen if e == 3][0]
    assert any(not torch.equal(first[k], last[k]) for k in first)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_in_bf16_channels_last_compiled_is_sync_free_and_close_to_fp32():
    """The GPU step as pretraining runs it (bf16 autocast, channels_last, torch.compile, mask
    on the device), with the branches as two passes and fused: no host synchronisation once
    compiled, and the loss of the same weights and views agrees with the plain float32 step."""
    from sdclr.config.compose import compose_config
    from sdclr.train.step import make_optimizer, prepare_model, train_step
    from sdclr.utils.precision import StepSettings

    dev = torch.device("cuda")
    cfg = compose_config(["device=cuda"]).pretrain
    x1, x2 = (v.to(dev) for v in views(16))
    losses = {}
    fast = StepSettings(torch.bfloat16, channels_last=True, compile=True)
    for name, settings, fuse in (
        ("fp32", StepSettings(), False),
        ("fast", fast, False),
        ("fast-fused", fast, True),
    ):
        model = prepare_model(small_model(dual_bn=True).to(dev), settings)
        method = ContrastiveMethod(0.2, 0.9, dual_bn=True, fuse_branches=fuse)
        method.setup(model)
        model.train()
        method.on_epoch_start(model)
        assert all(m.device.type == "cuda" for m in method.masks.values())
        opt = make_optimizer(model, cfg)
        fmt = settings.memory_format
        v1, v2 = x1.contiguous(memory_format=fmt), x2.contiguous(memory_format=fmt)
        first = train_step(model, method, opt, v1, v2, settings)  # compiles (fast)
        losses[name] = float(first)
        train_step(model, method, opt, v1, v2, settings)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")  # any host synchronisation raises
        try:
            for _ in range(2):
                loss = train_step(model, method, opt, v1, v2, settings)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss)
    for name in ("fast", "fast-fused"):
        assert abs(losses[name] - losses["fp32"]) < 0.02 * losses["fp32"], name
