"""Boosted Contrastive Learning (BCL; Zhou et al., ICML 2022, "Contrastive Learning with Boosted
Memorization") as batched tensor ops.

BCL tracks an exponential moving average of every training sample's contrastive loss
(:class:`sdclr.train.bcl.LossMemory`). Once per epoch the averages are normalised to
per-sample *strengths* in [0, 1] (:func:`sdclr.train.bcl.strengths`): samples the network
keeps failing to memorise (high loss, typically tail samples) get strong extra augmentation,
easy ones almost none. The extra augmentation is a
RandAugment variant applied after the usual contrastive view: each sample draws ``k`` ops
uniformly with replacement, applies each one with probability equal to its strength, at a
magnitude that grows with the strength (:class:`BoostConfig`).

Same design as :mod:`sdclr.augment.ops`: a sampler draws every per-sample parameter from one
``torch.Generator`` on the data's device, and a deterministic apply function takes the explicit
parameters. Every op is computed for the whole batch and selected per sample with ``torch.where``;
there is no per-image Python loop and no host synchronisation.

Op semantics follow torchvision's ``RandAugment`` float kernels with ``num_magnitude_bins=31``, so
a magnitude ``m`` on the 0..30 scale is torchvision's bin ``m`` (fractional magnitudes
interpolate): rotate ``30 * m / 30`` degrees, shear ``0.3 * m / 30``, translate
``150 / 331 * size * m / 30`` pixels (truncated to whole pixels), colour / contrast / brightness
/ sharpness factor ``1 + 0.9 * m / 30``, posterize ``8 - round(4 * m / 30)`` bits. Ops with a
direction take it from the sign of the magnitude (the sampler draws it with probability 1/2, as
RandAugment does); solarize and posterize use ``|m|``; identity, autocontrast and equalize ignore
it. Deviations, chosen so that magnitude 0 is an exact no-op:

* solarize inverts pixels ``>= (256 * (1 - m / 30) - 0.5) / 255``: PIL RandAugment's uint8
  threshold range [0, 256] (used by BCL's reference code), moved half a level down so 8-bit
  inputs never sit on the threshold; m = 0 inverts nothing, m = 30 everything;
* posterize at 8 bits returns the input (torchvision's float kernel would still quantise to
  1/256 steps).

Geometric ops use nearest interpolation and fill uncovered pixels with 0 (black), the defaults of
torchvision's RandAugment and of PIL's ``Image.transform`` / ``rotate`` in the reference code;
shears are about the top-left corner, rotation and translation about the centre, as there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sdclr.augment.ops import (
    Shard,
    _blend,
    _bview,
    _check_images,
    _device,
    _per_sample,
    _rand,
    global_count,
    rgb_to_grayscale,
    take_samples,
    to_float,
)

__all__ = [
    "AUTOCONTRAST",
    "BRIGHTNESS",
    "COLOR",
    "CONTRAST",
    "EQUALIZE",
    "FILL",
    "IDENTITY",
    "INTERPOLATION",
    "MAX_MAGNITUDE",
    "NUM_OPS",
    "OPS",
    "OP_NAMES",
    "POSTERIZE",
    "ROTATE",
    "SHARPNESS",
    "SHEAR_X",
    "SHEAR_Y",
    "SIGNED_OPS",
    "SOLARIZE",
    "TRANSLATE_X",
    "TRANSLATE_Y",
    "BoostConfig",
    "BoostParams",
    "apply_boost",
    "apply_op",
    "autocontrast",
    "boost",
    "brightness",
    "color",
    "contrast",
    "equalize",
    "identity",
    "posterize",
    "rotate",
    "sample_boost_params",
    "sharpness",
    "shear_x",
    "shear_y",
    "solarize",
    "translate_x",
    "translate_y",
]

# ---------------------------------------------------------------------------------------------
# op table
# ---------------------------------------------------------------------------------------------

MAX_MAGNITUDE = 30.0

(
    IDENTITY,
    AUTOCONTRAST,
    EQUALIZE,
    ROTATE,
    SOLARIZE,
    POSTERIZE,
    COLOR,
    CONTRAST,
    BRIGHTNESS,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    TRANSLATE_X,
    TRANSLATE_Y,
) = range(14)
NUM_OPS = 14
OP_NAMES = (
    "identity",
    "autocontrast",
    "equalize",
    "rotate",
    "solarize",
    "posterize",
    "color",
    "contrast",
    "brightness",
    "sharpness",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
)
# Ops whose direction is the sign of the magnitude (RandAugment's "signed" ops).
SIGNED_OPS = (
    ROTATE,
    COLOR,
    CONTRAST,
    BRIGHTNESS,
    SHARPNESS,
    SHEAR_X,
    SHEAR_Y,
    TRANSLATE_X,
    TRANSLATE_Y,
)
_GEOMETRIC = (ROTATE, SHEAR_X, SHEAR_Y, TRANSLATE_X, TRANSLATE_Y)
_ENHANCE = (COLOR, CONTRAST, BRIGHTNESS, SHARPNESS)

FILL = 0.0  # value of pixels a geometric op uncovers (zero padding of grid_sample)
INTERPOLATION = "nearest"

# RandAugment ranges at magnitude 30 (torchvision's _augmentation_space).
_ROTATE_DEG = 30.0
_SHEAR = 0.3
_TRANSLATE = 150.0 / 331.0
_ENHANCE_SPAN = 0.9
_POSTERIZE_DROP = 4.0


def _level(magnitude: Tensor | float, x: Tensor) -> Tensor:
    """Signed magnitude on the 0..30 scale -> [B] float32 fraction of the full range."""
    return _per_sample(magnitude, x) * (1.0 / MAX_MAGNITUDE)


# ---------------------------------------------------------------------------------------------
# geometric ops: one batched affine warp
# ---------------------------------------------------------------------------------------------

_Affine = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]


def _affine(op: int, level: Tensor, height: int, width: int) -> _Affine:
    """Inverse map (output -> input pixel) ``(a, b, c, d, e, f)`` per sample, in pixels with the
    origin at the image centre (torchvision's convention): ``x_in = a x + b y + c``,
    ``y_in = d x + e y + f``."""
    one, zero = torch.ones_like(level), torch.zeros_like(level)
    if op == ROTATE:  # counter-clockwise by the angle, like torchvision's rotate
        rad = level * math.radians(_ROTATE_DEG)
        cos, sin = torch.cos(rad), torch.sin(rad)
        return cos, -sin, zero, sin, cos, zero
    if op == SHEAR_X:  # about the top-left corner: x_in = x + s * y in corner coordinates
        s = level * _SHEAR
        return one, s, s * (height / 2), zero, one, zero
    if op == SHEAR_Y:
        s = level * _SHEAR
        return one, zero, zero, s, one, s * (width / 2)
    if op == TRANSLATE_X:  # whole pixels, truncated towards zero as torchvision's int()
        t = torch.trunc(level * (_TRANSLATE * width))
        return one, zero, -t, zero, one, zero
    if op == TRANSLATE_Y:
        t = torch.trunc(level * (_TRANSLATE * height))
        return one, zero, zero, zero, one, -t
    raise ValueError(f"op {op} is not geometric")


def _warp(x: Tensor, m: _Affine, mode: str) -> Tensor:
    """Resample every image through its own affine map (one affine_grid + grid_sample)."""
    b, c, height, width = x.shape
    a, b_, c_, d, e, f = m
    # Pixel units -> grid_sample's normalised [-1, 1] coordinates (align_corners=False), where
    # x_norm = x_pix / (W / 2): scale the off-diagonal terms by the aspect ratio, offsets by 2/size.
    theta = torch.stack(
        (a, b_ * (height / width), c_ * (2.0 / width), d * (width / height), e, f * (2.0 / height)),
        dim=1,
    ).view(b, 2, 3)
    grid = F.affine_grid(theta, [b, c, height, width], align_corners=False)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    if FILL != 0.0:  # zero padding is the fill; another constant needs the coverage mask
        cover = F.grid_sample(
            torch.ones_like(x[:, :1]), grid, mode=mode, padding_mode="zeros", align_corners=False
        )
        out = out + (1.0 - cover) * FILL
    return out.clamp_(0.0, 1.0)


def _geometric(op: int, x: Tensor, magnitude: Tensor | float, mode: str) -> Tensor:
    _check_images(x)
    x = to_float(x)
    return _warp(x, _affine(op, _level(magnitude, x), x.shape[2], x.shape[3]), mode)


def rotate(x: Tensor, magnitude: Tensor | float, mode: str = INTERPOLATION) -> Tensor:
    """Rotate by ``magnitude`` degrees (30 at magnitude 30), counter-clockwise when positive."""
    return _geometric(ROTATE, x, magnitude, mode)


def shear_x(x: Tensor, magnitude: Tensor | float, mode: str = INTERPOLATION) -> Tensor:
    """Horizontal shear ``0.3 * m / 30`` about the top-left corner."""
    return _geometric(SHEAR_X, x, magnitude, mode)


def shear_y(x: Tensor, magnitude: Tensor | float, mode: str = INTERPOLATION) -> Tensor:
    """Vertical shear ``0.3 * m / 30`` about the top-left corner."""
    return _geometric(SHEAR_Y, x, magnitude, mode)


def translate_x(x: Tensor, magnitude: Tensor | float, mode: str = INTERPOLATION) -> Tensor:
    """Shift right by ``trunc(150 / 331 * W * m / 30)`` pixels (left when negative)."""
    return _geometric(TRANSLATE_X, x, magnitude, mode)


def translate_y(x: Tensor, magnitude: Tensor | float, mode: str = INTERPOLATION) -> Tensor:
    """Shift down by ``trunc(150 / 331 * H * m / 30)`` pixels (up when negative)."""
    return _geometric(TRANSLATE_Y, x, magnitude, mode)


# ---------------------------------------------------------------------------------------------
# enhance ops: blends with a per-op target (PIL ImageEnhance / torchvision float kernels)
# ---------------------------------------------------------------------------------------------


def _sharpness_target(x: Tensor) -> Tensor:
    """torchvision's degenerate image: 3x3 smoothing (centre 5, rest 1, /13) inside, the input
    itself on the one-pixel border, which sharpness therefore leaves alone."""
    c, height, width = x.shape[1:]
    if height <= 2 or width <= 2:
        return x
    kernel = torch.full((c, 1, 3, 3), 1.0 / 13.0, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5.0 / 13.0
    target = x.clone()
    target[..., 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return target


def _enhance_target(op: int, x: Tensor, gray: Tensor) -> Tensor:
    if op == COLOR:
        return gray
    if op == CONTRAST:
        return gray.mean(dim=(-3, -2, -1), keepdim=True)
    if op == BRIGHTNESS:
        return torch.zeros_like(gray[:, :, :1, :1])
    if op == SHARPNESS:
        return _sharpness_target(x)
    raise ValueError(f"op {op} is not an enhance op")


def _enhance_factor(level: Tensor) -> Tensor:
    return _bview(1.0 + _ENHANCE_SPAN * level)


def _enhance(op: int, x: Tensor, magnitude: Tensor | float) -> Tensor:
    _check_images(x)
    x = to_float(x)
    target = _enhance_target(op, x, rgb_to_grayscale(x))
    return _blend(x, target, _enhance_factor(_level(magnitude, x)))


def color(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Saturation factor ``1 + 0.9 * m / 30`` (blend with the grayscale image)."""
    return _enhance(COLOR, x, magnitude)


def contrast(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Contrast factor ``1 + 0.9 * m / 30`` (blend with the mean grey level)."""
    return _enhance(CONTRAST, x, magnitude)


def brightness(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Brightness factor ``1 + 0.9 * m / 30`` (blend with black)."""
    return _enhance(BRIGHTNESS, x, magnitude)


def sharpness(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Sharpness factor ``1 + 0.9 * m / 30`` (blend with a smoothed image)."""
    return _enhance(SHARPNESS, x, magnitude)


# ---------------------------------------------------------------------------------------------
# pixel-value ops
# ---------------------------------------------------------------------------------------------


def identity(x: Tensor, magnitude: Tensor | float = 0.0) -> Tensor:
    """The input as float32 (RandAugment keeps a no-op among the choices)."""
    _check_images(x)
    return to_float(x)


def autocontrast(x: Tensor, magnitude: Tensor | float = 0.0) -> Tensor:
    """Stretch each channel to [0, 1]; flat channels are kept (torchvision's autocontrast)."""
    _check_images(x)
    x = to_float(x)
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    flat = hi == lo
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    span = torch.where(flat, torch.ones_like(hi), hi - lo)
    return ((x - lo) / span).clamp_(0.0, 1.0)


def equalize(x: Tensor, magnitude: Tensor | float = 0.0) -> Tensor:
    """Per-channel histogram equalisation with PIL's lookup table, batched like torchvision.

    Pixels are binned to 8 bits as torchvision does for float input (``trunc(x * 255.999)``), so
    the output lies on the 1/255 grid; one ``scatter_add_`` builds all B x C histograms at once.
    Channels PIL would leave alone (a single non-maximal level) keep their binned values.
    """
    _check_images(x)
    x = to_float(x)
    b, c, height, width = x.shape
    levels = (x * (256.0 - 1e-3)).to(torch.int64).clamp_(0, 255).view(b, c, height * width)
    hist = torch.zeros(b, c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(2, levels, torch.ones_like(levels))
    cum = hist.cumsum(dim=2)
    # The first bin where the cumulative count peaks is the highest level present.
    top = cum.argmax(dim=2, keepdim=True)
    step = torch.div(height * width - hist.gather(2, top), 255, rounding_mode="floor")
    valid = step != 0
    step = step.clamp(min=1)
    # lut[v] = (cum[v - 1] + step // 2) // step, lut[0] = 0 (PIL's ImageOps.equalize).
    lut = torch.div(cum[..., :-1] + step // 2, step, rounding_mode="floor").clamp_(0, 255)
    lut = torch.cat((torch.zeros_like(lut[..., :1]), lut), dim=2)
    out = torch.where(valid, lut.gather(2, levels), levels)
    return out.view(b, c, height, width).to(torch.float32).mul_(1.0 / 255)


def _solarize_threshold(level: Tensor) -> Tensor:
    # PIL's uint8 threshold 256 * (1 - level), half a level lower so 8-bit values never tie.
    return _bview((256.0 * (1.0 - level.abs()) - 0.5) / 255.0)


def solarize(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Invert pixels at or above a threshold falling from above 1 (m = 0) to below 0 (m = 30)."""
    _check_images(x)
    x = to_float(x)
    return torch.where(x >= _solarize_threshold(_level(magnitude, x)), 1.0 - x, x)


def _posterize_bits(level: Tensor) -> Tensor:
    return 8.0 - torch.round(_POSTERIZE_DROP * level.abs())


def posterize(x: Tensor, magnitude: Tensor | float) -> Tensor:
    """Keep ``8 - round(4 * m / 30)`` bits (torchvision's float kernel); 8 bits is a no-op."""
    _check_images(x)
    x = to_float(x)
    bits = _bview(_posterize_bits(_level(magnitude, x)))
    scale = torch.exp2(bits)
    out = torch.minimum(torch.floor(x * scale), scale - 1.0) / scale
    return torch.where(bits >= 8.0, x, out)


OPS: dict[int, Callable[..., Tensor]] = {
    IDENTITY: identity,
    AUTOCONTRAST: autocontrast,
    EQUALIZE: equalize,
    ROTATE: rotate,
    SOLARIZE: solarize,
    POSTERIZE: posterize,
    COLOR: color,
    CONTRAST: contrast,
    BRIGHTNESS: brightness,
    SHARPNESS: sharpness,
    SHEAR_X: shear_x,
    SHEAR_Y: shear_y,
    TRANSLATE_X: translate_x,
    TRANSLATE_Y: translate_y,
}


def apply_op(x: Tensor, op: Tensor, magnitude: Tensor, mode: str = INTERPOLATION) -> Tensor:
    """Apply op ``op[i]`` ([B] int64) at ``magnitude[i]`` to sample i.

    Every op runs on the whole batch and the result is picked per sample, but the five geometric
    ops share one warp (each sample's own matrix, identity otherwise) and the four enhance ops one
    blend (each sample's own target and factor), so a slot costs one grid_sample, not five.
    """
    _check_images(x)
    x = to_float(x)
    b, _, height, width = x.shape
    op = op.to(device=x.device, dtype=torch.int64).expand(b)
    level = _level(magnitude, x)
    op4 = _bview(op)

    one, zero = torch.ones_like(level), torch.zeros_like(level)
    mat: list[Tensor] = [one, zero, zero, zero, one, zero]
    for k in _GEOMETRIC:
        new = _affine(k, level, height, width)
        mat = [torch.where(op == k, n, o) for n, o in zip(new, mat, strict=True)]
    warped = _warp(x, (mat[0], mat[1], mat[2], mat[3], mat[4], mat[5]), mode)

    gray = rgb_to_grayscale(x)
    target = torch.zeros_like(x)
    for k in _ENHANCE:
        target = torch.where(op4 == k, _enhance_target(k, x, gray), target)
    blended = _blend(x, target, _enhance_factor(level))

    is_geo = torch.zeros_like(op, dtype=torch.bool)
    for k in _GEOMETRIC:
        is_geo = is_geo | (op == k)
    is_enh = torch.zeros_like(op, dtype=torch.bool)
    for k in _ENHANCE:
        is_enh = is_enh | (op == k)

    out = torch.where(_bview(is_geo), warped, x)
    out = torch.where(_bview(is_enh), blended, out)
    out = torch.where(op4 == AUTOCONTRAST, autocontrast(x), out)
    out = torch.where(op4 == EQUALIZE, equalize(x), out)
    out = torch.where(op4 == SOLARIZE, solarize(x, magnitude), out)
    return torch.where(op4 == POSTERIZE, posterize(x, magnitude), out)


# ---------------------------------------------------------------------------------------------
# boosted augmentation: config, sampler, apply
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BoostConfig:
    """How strength turns into augmentation: ``k`` ops per sample, each applied with probability
    ``strength``, at magnitude ``base + span * strength * (U(0, 1) if random_scale else 1)``.

    The uniform draw is one per sample, shared by its ``k`` ops, like BCL's reference
    (``RandAugment_prob(k, 30 * w * rand(), w)`` per view).
    """

    k: int
    base: float
    span: float
    random_scale: bool

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.base < 0 or self.span < 0 or self.base + self.span > MAX_MAGNITUDE:
            raise ValueError(
                f"need 0 <= base, 0 <= span and base + span <= {MAX_MAGNITUDE}, "
                f"got base {self.base}, span {self.span}"
            )

    @classmethod
    def for_sdclr(cls) -> BoostConfig:
        """On top of SDCLR: 2 ops, magnitude ``5 + 25 * strength * U(0, 1)``."""
        return cls(k=2, base=5.0, span=25.0, random_scale=True)

    @classmethod
    def for_simclr(cls) -> BoostConfig:
        """On top of SimCLR: 1 op, magnitude ``10 + 20 * strength``."""
        return cls(k=1, base=10.0, span=20.0, random_scale=False)


@dataclass
class BoostParams:
    """Per-sample boost parameters for ``k`` op slots, applied in slot order.

    ops:       [n, k] int64 op index (IDENTITY..TRANSLATE_Y), uniform with replacement.
    apply:     [n, k] bool, whether the slot's op is applied (probability = strength).
    magnitude: [n, k] float32 on the 0..30 scale, signed (the sign is the direction).
    """

    ops: Tensor
    apply: Tensor
    magnitude: Tensor


def sample_boost_params(
    n: int,
    strength: Tensor | float,
    cfg: BoostConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> BoostParams:
    """Draw ops, apply flags, scales and signs (in that fixed order) for n samples."""
    dev = _device(generator, device)
    if isinstance(strength, Tensor):
        s = strength.to(device=dev, dtype=torch.float32).reshape(-1).expand(n)
    else:
        s = torch.full((n,), float(strength), device=dev, dtype=torch.float32)
    ops = torch.randint(0, NUM_OPS, (n, cfg.k), generator=generator, device=dev)
    apply = _rand((n, cfg.k), generator, dev) < s[:, None]
    u = _rand((n,), generator, dev)  # drawn even without random_scale: stream layout is fixed
    sign = torch.where(_rand((n, cfg.k), generator, dev) < 0.5, -1.0, 1.0)
    scale = u if cfg.random_scale else torch.ones_like(u)
    mag = (cfg.base + cfg.span * s * scale).clamp(0.0, MAX_MAGNITUDE)
    return BoostParams(ops=ops, apply=apply, magnitude=mag[:, None] * sign)


def apply_boost(x: Tensor, params: BoostParams, mode: str = INTERPOLATION) -> Tensor:
    """Apply each slot's op where its flag is set; samples with no flag set are returned exactly
    (so strength 0 is a no-op)."""
    _check_images(x)
    out = to_float(x)
    dev = out.device
    ops = params.ops.to(dev)
    apply = params.apply.to(dev)
    magnitude = params.magnitude.to(device=dev, dtype=torch.float32)
    for slot in range(ops.shape[1]):
        new = apply_op(out, ops[:, slot], magnitude[:, slot], mode)
        out = torch.where(_bview(apply[:, slot]), new, out)
    return out


def boost(
    x: Tensor,
    strength: Tensor | float,
    cfg: BoostConfig,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
) -> Tensor:
    """Boosted RandAugment of a batch with per-sample ``strength`` ([B], from
    :func:`sdclr.train.bcl.strengths` indexed by dataset position); apply after the contrastive
    view, before normalisation. With ``shard``, ``x`` is this rank's chunk and ``strength``
    covers the global batch."""
    _check_images(x)
    n = global_count(x.shape[0], shard)
    params = sample_boost_params(n, strength, cfg, generator, x.device)
    if shard is not None:
        params = take_samples(params, shard.part(x.shape[0]))
    return apply_boost(x, params)
