"""The CUDA defaults' code on the CPU: the SDCLR step compiled with inductor equals the eager
step across a mask refresh (float64: an identity, tests/numerics.py), without recompiling
and with the masks at the same addresses; and a bf16 autocast step agrees with float32
within the measured bf16 rounding of the same computation."""

from __future__ import annotations

import pytest
import torch
from numerics import assert_close64, max_abs
from tiny import small_model, views

from sdclr.methods.simclr import ContrastiveMethod
from sdclr.train.step import prepare_model, train_step
from sdclr.utils.precision import StepSettings

F64 = torch.float64


def _sdclr(settings: StepSettings, dtype=F64):
    model = prepare_model(small_model(dual_bn=True, dtype=dtype), settings)
    method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return model, method, opt


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_the_compiled_sdclr_step_equals_the_eager_step_across_a_mask_refresh():
    """Two epochs of two steps each (the second batch odd, as an epoch's last batch is), the
    mask recomputed from the updated weights at the second epoch start: the compiled step's
    loss, every gradient and every updated weight equal the eager step's, the refreshed mask
    lives in the same tensors (the conv buffers stay bound to them), and the refresh compiles
    nothing new."""
    from torch._dynamo.utils import counters

    eager = _sdclr(StepSettings())
    compiled = _sdclr(StepSettings(compile=True))
    batches = [views(6, seed=1, dtype=F64), views(5, seed=2, dtype=F64)]
    first_masks = None
    for epoch in range(2):
        for model, method, _ in (eager, compiled):
            method.on_epoch_start(model)
        masks = compiled[1].masks
        if epoch == 0:
            first_masks = {k: (v, v.clone()) for k, v in masks.items()}
            graphs = None
        else:
            assert all(masks[k] is t for k, (t, _) in first_masks.items())  # refreshed in place
            assert any(not torch.equal(masks[k], old) for k, (_, old) in first_masks.items())
            assert compiled[0].backbone.conv1.mask is masks["conv1.weight"]
            graphs = counters["stats"]["unique_graphs"]
            assert graphs > 0  # inductor did compile the first epoch
        for v1, v2 in batches:
            losses, grads = [], []
            for model, method, opt in (eager, compiled):
                losses.append(train_step(model, method, opt, v1, v2, StepSettings()))
                grads.append(_grads(model))
            assert_close64(losses[1], losses[0], what=f"epoch {epoch} loss")
            scale = max_abs(grads[0].values())
            assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 40
            for name, g in grads[0].items():
                assert_close64(grads[1][name], g, scale, f"epoch {epoch} grad {name}")
        if graphs is not None:
            assert counters["stats"]["unique_graphs"] == graphs, "the mask refresh recompiled"
    for (name, p), (_, q) in zip(
        eager[0].named_parameters(), compiled[0].named_parameters(), strict=True
    ):
        assert_close64(q.detach(), p.detach(), what=f"weight {name}")


def test_a_bf16_step_agrees_with_float32_within_the_measured_bf16_rounding():
    """The loss and gradients of one bf16-autocast SDCLR step against the float32 step of the
    same weights, mask and views. The tolerance is measured where the test runs, not chosen:
    the float32 step is redone with every weight and view moved by bf16's unit roundoff
    (2^-8, relative, random signs; four draws), and its largest deviation from the plain
    float32 step is this computation's sensitivity to bf16 rounding. The bf16 step may be
    BF16_FACTOR times that far (measured at 0.05-1.3 for the loss and 0.6-0.7 for the
    gradients over four seeds on the development machine): a wrong branch, mask or BN copy
    in the bf16 path moves the loss by O(1) and cannot pass."""
    bf16_factor = 8.0
    unit = 2.0**-8

    def step(amp: torch.dtype | None, draw: int | None = None):
        model, method, opt = _sdclr(StepSettings(amp), dtype=torch.float32)
        v1, v2 = views(16, seed=3)
        method.on_epoch_start(model)  # the mask of the unperturbed weights in every case
        if draw is not None:
            g = torch.Generator().manual_seed(draw)

            def jiggle(x: torch.Tensor) -> torch.Tensor:
                signs = torch.randint(0, 2, x.shape, generator=g) * 2 - 1
                return x * (1 + unit * signs)

            with torch.no_grad():
                for p in model.parameters():
                    p.copy_(jiggle(p))
            v1, v2 = jiggle(v1), jiggle(v2)
        opt.param_groups[0]["lr"] = 0.0
        loss = train_step(model, method, opt, v1, v2, StepSettings(amp))
        return float(loss), _grads(model)

    def grad_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
        assert a.keys() == b.keys()
        return max(float((a[n] - b[n]).abs().max()) for n in a)

    loss32, grads32 = step(None)
    spread_loss, spread_grad = 0.0, 0.0
    for draw in range(4):
        loss_d, grads_d = step(None, draw)
        spread_loss = max(spread_loss, abs(loss_d - loss32))
        spread_grad = max(spread_grad, grad_gap(grads_d, grads32))
    assert spread_loss > 0 and spread_grad > 0, "the perturbation changed nothing: no scale"
    loss16, grads16 = step(torch.bfloat16)
    assert abs(loss16 - loss32) <= bf16_factor * spread_loss, (loss16, loss32, spread_loss)
    gap = grad_gap(grads16, grads32)
    assert gap <= bf16_factor * spread_grad, (gap, spread_grad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_the_compiled_cuda_step_equals_the_eager_step_across_a_mask_refresh(mode):
    """On a GPU, in float64 (cuDNN and inductor's kernels round at 2^-53 there, so this is an
    identity): the compiled step, CUDA graphs included (reduce-overhead), against the eager
    step over two epochs, the mask refreshed in place between them; and the monitors'
    features of the compiled model, kept across calls, equal the eager ones."""
    from sdclr.eval.features import encode

    dev = torch.device("cuda")

    def setup(settings):
        model = small_model(dual_bn=True, dtype=F64).to(dev)
        model = prepare_model(model, settings)
        method = ContrastiveMethod(0.2, 0.9, dual_bn=True)
        model.train()
        return model, method, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)

    eager = setup(StepSettings())
    compiled = setup(StepSettings(compile=True, compile_mode=mode))
    batches = [tuple(v.to(dev) for v in views(6, seed=s, dtype=F64)) for s in (1, 2)]
    for epoch in range(2):
        for model, method, _ in (eager, compiled):
            method.on_epoch_start(model)
        for _ in range(3):  # CUDA graphs record on the second call and replay after
            for v1, v2 in batches:
                losses = [
                    train_step(m, meth, opt, v1, v2, StepSettings())
                    for m, meth, opt in (eager, compiled)
                ]
                assert_close64(losses[1], losses[0], what=f"{mode} epoch {epoch} loss")
    with torch.no_grad():
        feats = []
        for model, _, _ in (eager, compiled):
            model.eval()
            chunks = [encode(model.backbone, v, None) for v, _ in batches]
            feats.append(torch.cat(chunks))
    assert_close64(feats[1], feats[0], what=f"{mode} features kept across calls")
