"""Tests for sdclr.augment.boost (BCL's boosted RandAugment): the batched RandAugment ops
against torchvision, the presets and the magnitude rules (the loss memory and strengths:
tests/train/test_bcl.py).

Images are smooth random images on the 1/255 grid (like decoded 8-bit data). Pixel ops,
posterize, solarize, equalize, autocontrast and nearest-neighbour geometric ops are exact; the
enhance blends and bilinear rotation are compared with torchvision's op in float64, within a
multiple of that op's own float32 rounding measured where the test runs (tests/numerics.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_float32_close
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from sdclr.augment import boost as B

N_STAT = 20000


def _images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = torch.nn.functional.interpolate(low, size=size, mode="bilinear").clamp(0, 1)
    return (x * 255).round() / 255


# ---------------------------------------------------------------------------------------------
# ops
# ---------------------------------------------------------------------------------------------

# autocontrast and equalize have no magnitude, so magnitude 0 is not a no-op for them
WITH_MAGNITUDE = [op for op in range(B.NUM_OPS) if op not in (B.AUTOCONTRAST, B.EQUALIZE)]


@pytest.mark.parametrize("op", WITH_MAGNITUDE, ids=[B.OP_NAMES[op] for op in WITH_MAGNITUDE])
def test_op_at_magnitude_zero_is_identity(op):
    x = _images()
    out = B.OPS[op](x, torch.zeros(x.shape[0]))
    # sharpness blends the border with itself: x * 1 + x * 0, exact as well
    assert torch.equal(out, x)


@pytest.mark.parametrize("op", range(B.NUM_OPS), ids=B.OP_NAMES)
def test_op_range_shape_dtype(op):
    x = _images(8, size=20)
    mag = torch.linspace(-30, 30, 8)
    out = B.OPS[op](x, mag)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


def test_fused_apply_op_matches_standalone_ops():
    x = _images(B.NUM_OPS * 2)
    ops = torch.arange(B.NUM_OPS).repeat(2)
    mag = torch.linspace(-30, 30, B.NUM_OPS * 2)
    out = B.apply_op(x, ops, mag)
    for i in range(x.shape[0]):
        ref = B.OPS[int(ops[i])](x[i : i + 1], mag[i : i + 1])
        assert torch.equal(out[i : i + 1], ref), B.OP_NAMES[int(ops[i])]


M = 15.0  # half of the range: factor 1.45, 15 degrees, shear 0.15, 6 bits, 7 px at 32 px


@pytest.mark.numerics
def test_colour_ops_match_torchvision():
    x = _images()
    f = 1.0 + 0.9 * M / 30
    g = 1.0 - 0.9 * M / 30  # negative magnitude: the other direction
    for ours, tv, factor in (
        (B.brightness(x, M), TF.adjust_brightness, f),
        (B.contrast(x, M), TF.adjust_contrast, f),
        (B.color(x, M), TF.adjust_saturation, f),
        (B.sharpness(x, M), TF.adjust_sharpness, f),
        (B.contrast(x, -M), TF.adjust_contrast, g),
        (B.sharpness(x, -M), TF.adjust_sharpness, g),
    ):
        ref = lambda t, op=tv, f=factor: op(t, f)  # noqa: E731
        assert_float32_close(ours, ref, x, what=f"{tv.__name__} {factor}")


def test_pixel_ops_match_torchvision():
    x = _images()
    # threshold (256 * (1 - m / 30) - 0.5) / 255, between two 8-bit levels
    thr = (256 * (1 - M / 30) - 0.5) / 255
    assert torch.equal(B.solarize(x, M), TF.solarize(x, thr))
    assert torch.equal(B.solarize(x, -M), TF.solarize(x, thr))  # unsigned op
    assert torch.equal(B.solarize(x, 30.0), 1 - x)
    assert torch.equal(B.posterize(x, M), TF.posterize(x, 6))
    assert torch.equal(B.posterize(x, 30.0), TF.posterize(x, 4))
    low_contrast = x * 0.5 + 0.2
    assert torch.equal(B.autocontrast(low_contrast), TF.autocontrast(low_contrast))
    flat = torch.full((2, 3, 8, 8), 0.3)
    assert torch.equal(B.autocontrast(flat), TF.autocontrast(flat))
    noisy = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    for img in (x, noisy, flat):
        assert torch.equal(B.equalize(img), TF.equalize(img))


@pytest.mark.numerics
def test_geometric_ops_match_torchvision():
    x = _images()
    near = InterpolationMode.NEAREST
    assert torch.equal(B.rotate(x, M), TF.rotate(x, M, interpolation=near))
    assert torch.equal(B.rotate(x, -M), TF.rotate(x, -M, interpolation=near))
    assert_float32_close(
        B.rotate(x, M, mode="bilinear"),
        lambda t: TF.rotate(t, M, interpolation=InterpolationMode.BILINEAR),
        x,
        what="bilinear rotation",
    )
    shear = math.degrees(math.atan(0.3 * M / 30))
    kw = {"angle": 0.0, "translate": [0, 0], "scale": 1.0, "interpolation": near}
    assert torch.equal(B.shear_x(x, M), TF.affine(x, shear=[shear, 0.0], center=[0, 0], **kw))
    assert torch.equal(B.shear_y(x, -M), TF.affine(x, shear=[0.0, -shear], center=[0, 0], **kw))
    t = int(150 / 331 * 32 * M / 30)
    kw.pop("translate")
    assert torch.equal(B.translate_x(x, M), TF.affine(x, translate=[t, 0], shear=[0.0, 0.0], **kw))
    assert torch.equal(
        B.translate_y(x, -M), TF.affine(x, translate=[0, -t], shear=[0.0, 0.0], **kw)
    )


# ---------------------------------------------------------------------------------------------
# boosted augmentation
# ---------------------------------------------------------------------------------------------


def test_presets():
    sd, sim = B.BoostConfig.for_sdclr(), B.BoostConfig.for_simclr()
    assert (sd.k, sd.base, sd.span, sd.random_scale) == (2, 5.0, 25.0, True)
    assert (sim.k, sim.base, sim.span, sim.random_scale) == (1, 10.0, 20.0, False)
    with pytest.raises(ValueError):
        B.BoostConfig(k=0, base=5.0, span=25.0, random_scale=True)
    with pytest.raises(ValueError):
        B.BoostConfig(k=1, base=10.0, span=25.0, random_scale=True)


def test_zero_strength_leaves_images_unchanged():
    x = _images(16)
    for cfg in (B.BoostConfig.for_sdclr(), B.BoostConfig.for_simclr()):
        out = B.boost(x, torch.zeros(16), cfg, torch.Generator().manual_seed(0))
        assert torch.equal(out, x)
    # mixed: zero-strength samples are untouched, full-strength ones are changed
    s = torch.tensor([0.0, 1.0] * 8)
    params = B.sample_boost_params(16, s, B.BoostConfig.for_sdclr(), torch.Generator())
    assert not params.apply[s == 0].any() and params.apply[s == 1].all()
    out = B.apply_boost(x, params)
    assert torch.equal(out[s == 0], x[s == 0])


def test_determinism_and_output_contract():
    x = _images(12)
    s = torch.linspace(0, 1, 12)
    cfg = B.BoostConfig.for_sdclr()
    a = B.boost(x, s, cfg, torch.Generator().manual_seed(7))
    b = B.boost(x, s, cfg, torch.Generator().manual_seed(7))
    c = B.boost(x, s, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    # uint8 input is accepted and scaled
    u8 = (x * 255).round().to(torch.uint8)
    from_u8 = B.boost(u8, s, cfg, torch.Generator().manual_seed(7))
    torch.testing.assert_close(from_u8, a, atol=1e-6, rtol=0)


def test_slots_apply_in_order():
    x = _images(2)
    params = B.BoostParams(
        ops=torch.tensor([[B.ROTATE, B.SOLARIZE], [B.SOLARIZE, B.ROTATE]]),
        apply=torch.tensor([[True, True], [True, False]]),
        magnitude=torch.tensor([[20.0, 10.0], [10.0, 20.0]]),
    )
    out = B.apply_boost(x, params)
    assert torch.equal(out[:1], B.solarize(B.rotate(x[:1], 20.0), 10.0))
    assert torch.equal(out[1:], B.solarize(x[1:], 10.0))


def test_sdclr_magnitude_rule():
    s = 0.8
    gen = torch.Generator().manual_seed(0)
    p = B.sample_boost_params(N_STAT, s, B.BoostConfig.for_sdclr(), gen)
    assert p.ops.shape == p.apply.shape == p.magnitude.shape == (N_STAT, 2)
    mag = p.magnitude.abs()
    # one uniform per sample, shared by both slots; signs independent, fair
    assert torch.equal(mag[:, 0], mag[:, 1])
    assert mag.min() >= 5.0 and mag.max() <= 5.0 + 25.0 * s
    assert abs(mag[:, 0].mean() - (5.0 + 25.0 * s / 2)) < 0.2  # sd of mean ~0.04
    assert abs(mag[:, 0].std() - 25.0 * s / math.sqrt(12)) < 0.15
    assert abs((p.magnitude < 0).float().mean() - 0.5) < 0.015
    # apply probability = strength; ops uniform over the 14 choices
    assert abs(p.apply.float().mean() - s) < 0.01
    freq = torch.bincount(p.ops.flatten(), minlength=B.NUM_OPS).float() / p.ops.numel()
    assert (freq - 1 / B.NUM_OPS).abs().max() < 0.01
    # per-sample strengths scale the magnitude range
    s_vec = torch.linspace(0, 1, N_STAT)
    p = B.sample_boost_params(N_STAT, s_vec, B.BoostConfig.for_sdclr(), torch.Generator())
    mag = p.magnitude[:, 0].abs()
    assert (mag >= 5.0).all() and (mag <= 5.0 + 25.0 * s_vec + 1e-5).all()


def test_simclr_magnitude_rule():
    s_vec = torch.linspace(0, 1, N_STAT)
    cfg = B.BoostConfig.for_simclr()
    p = B.sample_boost_params(N_STAT, s_vec, cfg, torch.Generator().manual_seed(0))
    assert p.ops.shape == (N_STAT, 1)
    torch.testing.assert_close(p.magnitude[:, 0].abs(), 10.0 + 20.0 * s_vec)
    # apply probability tracks the strength: compare halves
    lo, hi = p.apply[: N_STAT // 2].float().mean(), p.apply[N_STAT // 2 :].float().mean()
    assert abs(lo - 0.25) < 0.02 and abs(hi - 0.75) < 0.02
