"""The training step (sdclr.train.step): a 2-process DDP step equals one process on the same
global batch (gloo, in float64: tests/numerics.py), each rank augments only its chunk and
gets the single-process views, BCL's boost goes between augmentation and normalisation,
compiling raises dynamo's recompile limit, and the CUDA step (bf16, channels_last,
compiled) is sync-free and close to float32."""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from numerics import assert_close64, max_abs
from ranks import ddp_model_and_method, ddp_views, ddp_worker, free_port
from tiny import images, small_model, views

from sdclr.augment.boost import BoostConfig, sample_boost_params
from sdclr.config.compose import compose_config
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.train.step import make_views, train_step
from sdclr.utils.precision import StepSettings


@pytest.mark.numerics
def test_ddp_step_equals_a_single_process_step_on_the_global_batch():
    out = mp.Manager().dict()
    mp.spawn(ddp_worker, args=(2, free_port(), out), nprocs=2, join=True)
    model, method = ddp_model_and_method()
    model.train()
    method.on_epoch_start(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    v1, v2 = ddp_views()
    loss = train_step(model, method, opt, v1, v2, StepSettings())
    assert_close64(out["loss"], loss, what="loss")
    grads = out["grads"]
    assert len(grads) > 20
    # relative to the largest gradient: biases before BN have a true gradient of zero and
    # a computed one that is rounding noise
    scale = max_abs(p.grad for p in model.parameters() if p.grad is not None)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close64(grads[name], p.grad, scale, name)
    assert all(torch.equal(out["masks"][k], method.masks[k]) for k in method.masks)
    # global-batch BN: running statistics as if one process had seen the whole batch
    assert_close64(out["running_mean"], model.backbone.bn1.bn[0].running_mean, what="running mean")


def test_each_rank_augments_only_its_chunk_and_gets_the_single_process_views():
    """Under torchrun a rank decodes and augments only its chunk; the draws still cover the
    global batch, so the views (BCL boost included) equal the single-process ones chunk by
    chunk, and the generators stay in step."""
    from sdclr.augment.boost import BoostConfig
    from sdclr.augment.ops import ContrastiveAugmentConfig, Shard
    from sdclr.train.step import make_views
    from sdclr.utils.precision import StepSettings

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 40, 48, generator=g) * 255).to(torch.uint8)
    files = [images[i, :, : 28 + 2 * i, : 44 - 3 * i] for i in range(6)]  # varied sizes
    cfg = ContrastiveAugmentConfig(size=24, scale=(0.08, 1.0), blur_p=0.5)
    strength = torch.rand(6, generator=g)
    mean, std = [0.5] * 3, [0.25] * 3
    for batch in (images, files):
        whole_gen = torch.Generator().manual_seed(3)
        whole = make_views(
            batch, cfg, whole_gen, mean, std, StepSettings(), (strength, BoostConfig.for_sdclr())
        )
        for rank in range(3):
            gen = torch.Generator().manual_seed(3)
            part = make_views(
                batch[2 * rank : 2 * rank + 2],
                cfg,
                gen,
                mean,
                std,
                StepSettings(),
                (strength, BoostConfig.for_sdclr()),
                Shard(rank, 3),
            )
            for mine, single in zip(part, whole):
                assert torch.equal(mine, single[2 * rank : 2 * rank + 2])
            assert torch.equal(gen.get_state(), whole_gen.get_state())


def test_boost_goes_after_the_augmentation_and_before_normalisation():
    from sdclr.augment.ops import normalize
    from sdclr.augment.views import contrastive_view
    from sdclr.train.step import augment_config

    cfg = compose_config([])
    aug = augment_config(cfg.data)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    x = images(6)
    bcfg = BoostConfig.for_sdclr()
    for s in (0.0, 1.0):
        strength = torch.full((6,), s)
        v1, v2 = make_views(
            x, aug, torch.Generator().manual_seed(3), mean, std, StepSettings(), (strength, bcfg)
        )
        g = torch.Generator().manual_seed(3)
        a = contrastive_view(x, aug, g)
        pa = sample_boost_params(6, strength, bcfg, g)
        b = contrastive_view(x, aug, g)
        pb = sample_boost_params(6, strength, bcfg, g)
        from sdclr.augment.boost import apply_boost

        assert torch.equal(v1, normalize(apply_boost(a, pa), mean, std))
        assert torch.equal(v2, normalize(apply_boost(b, pb), mean, std))
        if s == 0.0:  # strength 0 leaves the augmented views as they were
            assert torch.equal(v1, normalize(a, mean, std))
        else:
            assert not torch.equal(v1, normalize(a, mean, std))
    # without boost: the views of before, bit for bit
    plain = make_views(x, aug, torch.Generator().manual_seed(3), mean, std, StepSettings())
    g = torch.Generator().manual_seed(3)
    assert torch.equal(plain[0], normalize(contrastive_view(x, aug, g), mean, std))
    assert torch.equal(plain[1], normalize(contrastive_view(x, aug, g), mean, std))


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
        assert torch.backends.cudnn.benchmark  # the runner's CUDA runs autotune too
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
