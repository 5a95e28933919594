"""Batched image augmentations for contrastive learning, as pure tensor ops.

Every random op is split into a *sampler* that draws per-sample parameters for the whole batch
from one ``torch.Generator`` and a deterministic *apply* function that takes explicit parameter
tensors. The random wrappers (``random_resized_crop``, ``color_jitter`` ...) just compose the two,
so tests can re-draw the same parameters and compare against torchvision image by image.

Design constraints (why the code looks the way it does):

* the same code runs on CPU and CUDA, so parameters are drawn on the data's device;
* no per-image Python loops and no host synchronisation: no ``.item()``, no ``nonzero``, no
  data-dependent boolean indexing. Per-sample choices are made with ``torch.where``, gathers and
  batched matmuls, so every sample is computed and the unwanted result is masked out. The one
  exception is the CPU, where a data-dependent gather costs nothing: there colour jitter and
  blur compute only the samples they apply to, with results identical to the GPU form;
* semantics follow torchvision (``transforms.RandomResizedCrop.get_params`` and the
  ``transforms.v2.functional`` float kernels), which the SDCLR reference pipeline uses.

Images are ``[B, 3, H, W]`` uint8 (``0..255``) or float (``[0, 1]``); outputs are float32 in
``[0, 1]``. Normalisation is only done by :func:`normalize`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "BRIGHTNESS",
    "CONTRAST",
    "SATURATION",
    "HUE",
    "Shard",
    "ContrastiveAugmentConfig",
    "ContrastiveParams",
    "JitterParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "apply_color_jitter",
    "apply_contrastive",
    "apply_photometric",
    "compiled_apply",
    "apply_gaussian_blur",
    "apply_grayscale",
    "apply_horizontal_flip",
    "apply_pad_crop_flip",
    "color_jitter",
    "contrastive_view",
    "default_blur_kernel_size",
    "gaussian_blur",
    "horizontal_flip",
    "jitter_ranges",
    "normalize",
    "pad_crop_flip",
    "random_grayscale",
    "random_resized_crop",
    "resized_crop_boxes",
    "rgb_to_grayscale",
    "sample_bernoulli",
    "sample_blur_params",
    "sample_contrastive_params",
    "sample_contrastive_params_sized",
    "sample_crop_boxes",
    "sample_crop_boxes_sized",
    "sample_jitter_params",
    "sample_pad_crop_params",
    "take_samples",
    "to_float",
]

# Op indices used in JitterParams.order; same numbering as torchvision's ColorJitter fn_idx.
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3

# torchvision's rgb_to_grayscale weights (ITU-R 601-2 luma, as rounded by torchvision).
_GRAY_R, _GRAY_G, _GRAY_B = 0.2989, 0.587, 0.114

# RandomResizedCrop.get_params tries this many boxes before falling back to a central crop.
_CROP_ATTEMPTS = 10


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shard:
    """This process's part of a batch whose parameters are drawn whole (torchrun): chunk
    ``rank`` of ``world`` equal chunks. Every rank draws the parameters of the global batch, so
    the ranks' generators stay in step and each rank's views are exactly its chunk of the views
    one process would make; only the chunk is decoded and augmented."""

    rank: int
    world: int

    def part(self, n_local: int) -> slice:
        return slice(self.rank * n_local, (self.rank + 1) * n_local)


def global_count(n_local: int, shard: Shard | None) -> int:
    return n_local * shard.world if shard is not None else n_local


def take_samples(params, rows: slice):
    """The parameters of samples ``rows`` (every per-sample tensor field, nested dataclasses too;
    static fields are kept)."""
    out = {}
    for f in fields(params):
        value = getattr(params, f.name)
        if isinstance(value, Tensor):
            out[f.name] = value[rows]
        elif is_dataclass(value):
            out[f.name] = take_samples(value, rows)
    return replace(params, **out)


def to_float(x: Tensor) -> Tensor:
    """uint8 ``0..255`` -> float32 ``[0, 1]`` (as torchvision's ``to_dtype(scale=True)``);
    float input is only cast to float32."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32).mul_(1.0 / 255)
    return x.to(torch.float32)


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(x.shape)}")


def _device(generator: torch.Generator | None, device: torch.device | str | None) -> torch.device:
    # The generator must live where the draws happen; default to its device.
    if device is not None:
        return torch.device(device)
    if generator is not None:
        return generator.device
    return torch.device("cpu")


def _rand(
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _uniform(
    n: int, low: float, high: float, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    # Same affine map as Tensor.uniform_(low, high).
    return low + (high - low) * _rand((n,), generator, device)


def _bview(t: Tensor) -> Tensor:
    """[B] -> [B, 1, 1, 1] so per-sample values broadcast over C, H, W."""
    return t.reshape(-1, 1, 1, 1)


def _per_sample(value: Tensor | float, x: Tensor) -> Tensor:
    """Per-sample factor as a float32 [B] tensor on x's device (a float is broadcast)."""
    if isinstance(value, Tensor):
        return value.to(device=x.device, dtype=torch.float32).expand(x.shape[0])
    return torch.full((x.shape[0],), float(value), device=x.device, dtype=torch.float32)


def sample_bernoulli(
    n: int,
    p: float,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """[n] bool, True with probability p (torchvision's ``torch.rand(1) < p`` per sample)."""
    return _rand((n,), generator, _device(generator, device)) < p


# ---------------------------------------------------------------------------------------------
# random resized crop
# ---------------------------------------------------------------------------------------------


def sample_crop_boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Boxes ``[n, 4]`` int64 ``(top, left, h, w)`` with the rule of
    ``torchvision.transforms.RandomResizedCrop.get_params``, vectorised over samples."""
    dev = _device(generator, device)
    heights = torch.full((n,), height, dtype=torch.int64, device=dev)
    widths = torch.full((n,), width, dtype=torch.int64, device=dev)
    return sample_crop_boxes_sized(heights, widths, scale, ratio, generator)


def sample_crop_boxes_sized(
    heights: Tensor,
    widths: Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """:func:`sample_crop_boxes` for images of different sizes (``heights`` / ``widths`` per
    sample), as needed for batches of decoded files.

    All 10 attempts are drawn for every sample at once; the first valid attempt is picked with an
    argmax over the validity mask, and samples without a valid attempt get the central fallback
    (ratio clamped to the range), computed per sample.
    """
    dev = heights.device
    n = len(heights)
    # float64 like torchvision's Python-float sqrt/round (round half to even in both).
    height, width = heights.to(torch.float64), widths.to(torch.float64)
    area = (height * width)[:, None]
    u_area = _rand((n, _CROP_ATTEMPTS), generator, dev, torch.float64)
    u_ratio = _rand((n, _CROP_ATTEMPTS), generator, dev, torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u_ratio)
    w_try = torch.round(torch.sqrt(target_area * aspect))
    h_try = torch.round(torch.sqrt(target_area / aspect))
    valid = (w_try > 0) & (w_try <= width[:, None]) & (h_try > 0) & (h_try <= height[:, None])

    # argmax returns the first maximal index, i.e. the first accepted attempt.
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)
    found = valid.any(dim=1)

    in_ratio = width / height
    narrow, wide = in_ratio < min(ratio), in_ratio > max(ratio)
    fb_w = torch.where(wide, torch.round(height * max(ratio)), width)
    fb_h = torch.where(narrow, torch.round(width / min(ratio)), height)

    h = torch.where(found, h_try.gather(1, first).squeeze(1), fb_h)
    w = torch.where(found, w_try.gather(1, first).squeeze(1), fb_w)

    # Uniform integer offsets randint(0, H - h + 1); the clamp guards u * m rounding up to m.
    u_pos = _rand((n, 2), generator, dev, torch.float64)
    top = torch.minimum(torch.floor(u_pos[:, 0] * (height - h + 1)), height - h)
    left = torch.minimum(torch.floor(u_pos[:, 1] * (width - w + 1)), width - w)
    top = torch.where(found, top, torch.div(height - fb_h, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(width - fb_w, 2, rounding_mode="floor"))
    return torch.stack((top, left, h, w), dim=1).to(torch.int64)


def _cubic_aa(x: Tensor) -> Tensor:
    """PIL/PyTorch antialias bicubic filter (Keys kernel with a = -0.5, support 2)."""
    a = -0.5
    ax = x.abs()
    near = ((a + 2.0) * ax - (a + 3.0)) * ax * ax + 1.0
    far = (((ax - 5.0) * ax + 8.0) * ax - 4.0) * a
    return torch.where(ax < 1.0, near, torch.where(ax < 2.0, far, torch.zeros_like(ax)))


def _linear_aa(x: Tensor) -> Tensor:
    """PIL/PyTorch antialias bilinear filter (triangle, support 1)."""
    return (1.0 - x.abs()).clamp(min=0.0)


# resampling filters by interpolation mode (both antialiased, as torchvision's tensor resize)
_FILTERS = {"bicubic": _cubic_aa, "bilinear": _linear_aa}


def _resize_weights(
    start: Tensor, length: Tensor, in_size: int, out_size: int, mode: str = "bicubic"
) -> Tensor:
    """Per-sample 1-D resize matrix ``[B, out_size, in_size]`` for ``[start, start + length)``.

    Mirrors PyTorch's ``_upsample_bicubic2d_aa`` (``_upsample_bilinear2d_aa``) weights:
    scale = length / out; output sample i has centre scale * (i + 0.5) in crop coordinates; when
    downscaling the filter is stretched by the scale (antialias); taps outside the crop are
    dropped and the rest renormalised. Columns outside the crop get zero weight, so the crop
    itself is part of the matmul.
    """
    dev = start.device
    scale = length.to(torch.float32) / out_size  # [B]
    inv_support = 1.0 / scale.clamp(min=1.0)  # filter stretch only when downscaling
    centre = scale[:, None] * (torch.arange(out_size, device=dev, dtype=torch.float32) + 0.5)
    local = torch.arange(in_size, device=dev)[None, :] - start[:, None]  # [B, in] crop coords
    offset = local[:, None, :].to(torch.float32) + 0.5 - centre[:, :, None]  # [B, out, in]
    dist = offset * inv_support[:, None, None]
    inside = (local >= 0) & (local < length[:, None])  # [B, in]
    weights = torch.where(inside[:, None, :], _FILTERS[mode](dist), torch.zeros_like(dist))
    total = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(total != 0, total, torch.ones_like(total))


def resized_crop_boxes(x: Tensor, boxes: Tensor, size: int, mode: str = "bicubic") -> Tensor:
    """Crop each image to its box ``(top, left, h, w)`` and resize to ``size x size``.

    Same result as torchvision ``resized_crop(..., BICUBIC, antialias=True)`` on float images
    (then clamped to [0, 1]; ``mode="bilinear"``: BILINEAR, torchvision's default), computed as
    ``Wy @ img @ Wx^T`` with per-sample separable weight matrices, so up- and downscaling share
    one code path and no per-image loop is needed. (If the caller enables TF32 matmuls on
    CUDA, the error grows to ~1e-3, harmless here.)
    """
    _check_images(x)
    x = to_float(x)
    _, _, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.int64)
    if mode not in _FILTERS:
        raise ValueError(f"unknown interpolation {mode!r}; use {' or '.join(_FILTERS)}")
    wy = _resize_weights(boxes[:, 0], boxes[:, 2], height, size, mode)  # [B, size, H]
    wx = _resize_weights(boxes[:, 1], boxes[:, 3], width, size, mode)  # [B, size, W]
    # Contract W first, then H: [B,C,H,W] @ [B,1,W,S] -> [B,C,H,S]; [B,1,S,H] @ that -> [B,C,S,S].
    out = torch.matmul(x, wx.transpose(1, 2).unsqueeze(1))
    out = torch.matmul(wy.unsqueeze(1), out)
    # Bicubic overshoots; torchvision clamps for uint8 and we want a valid [0, 1] image.
    return out.clamp_(0.0, 1.0)


def random_resized_crop(
    x: Tensor,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> Tensor:
    """torchvision ``RandomResizedCrop(size, scale, ratio, BICUBIC, antialias=True)`` per sample."""
    _check_images(x)
    boxes = sample_crop_boxes(x.shape[0], x.shape[2], x.shape[3], scale, ratio, generator, x.device)
    return resized_crop_boxes(x, boxes, size)


# ---------------------------------------------------------------------------------------------
# horizontal flip
# ---------------------------------------------------------------------------------------------


def apply_horizontal_flip(x: Tensor, flip: Tensor) -> Tensor:
    """Mirror the samples where ``flip`` ([B] bool) is True."""
    x = to_float(x)
    return torch.where(_bview(flip.to(x.device)), x.flip(-1), x)


def horizontal_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """torchvision ``RandomHorizontalFlip(p)`` with an independent draw per sample."""
    _check_images(x)
    return apply_horizontal_flip(x, sample_bernoulli(x.shape[0], p, generator, x.device))


# ---------------------------------------------------------------------------------------------
# colour ops (torchvision.transforms.v2.functional float kernels, per-sample factors)
# ---------------------------------------------------------------------------------------------


def rgb_to_grayscale(x: Tensor, num_output_channels: int = 1) -> Tensor:
    """Luma ``[B, 1, H, W]`` (or replicated to 3 channels) with torchvision's weights."""
    x = to_float(x)
    r, g, b = x.unbind(dim=-3)
    gray = (r * _GRAY_R + g * _GRAY_G + b * _GRAY_B).unsqueeze(-3)
    if num_output_channels == 3:
        gray = gray.expand(x.shape)
    return gray


def _blend(x: Tensor, target: Tensor, ratio: Tensor) -> Tensor:
    # torchvision's _blend: x * r + target * (1 - r), clamped; ratio is [B, 1, 1, 1].
    return (x * ratio + target * (1.0 - ratio)).clamp_(0.0, 1.0)


def adjust_brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """Multiply by a per-sample factor and clamp (blend with black)."""
    x = to_float(x)
    return (x * _bview(_per_sample(factor, x))).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the per-image mean of the grayscale image."""
    x = to_float(x)
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, _bview(_per_sample(factor, x)))


def adjust_saturation(x: Tensor, factor: Tensor | float) -> Tensor:
    """Blend with the grayscale image."""
    x = to_float(x)
    return _blend(x, rgb_to_grayscale(x), _bview(_per_sample(factor, x)))


def _rgb_to_hsv(image: Tensor) -> Tensor:
    # Same arithmetic as torchvision.transforms.v2.functional._color._rgb_to_hsv.
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc  # grey pixels: avoid 0/0, their H and S come out as 0
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze(-3)
    rc, gc, bc = ((maxc.unsqueeze(-3) - image) / divisor).unbind(dim=-3)
    maxc_neq_r = maxc != r
    maxc_eq_g = maxc == g
    hg = (rc + 2.0 - bc) * (maxc_eq_g & maxc_neq_r)
    hr = (bc - gc) * (~maxc_neq_r)
    hb = (gc + 4.0 - rc) * (maxc_neq_r & ~maxc_eq_g)
    h = ((hr + hg + hb) * (1.0 / 6.0) + 1.0).fmod(1.0)
    return torch.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: Tensor) -> Tensor:
    # torchvision's _hsv_to_rgb; the sector -> (v, p, q, t) lookup table is expressed with
    # torch.where instead of indexing a host-built table, so nothing is copied to the device.
    h, s, v = img.unbind(dim=-3)
    h6 = h * 6
    i = torch.floor(h6)
    f = h6 - i
    i = i.to(torch.int32).remainder(6)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = ((1.0 - sxf) * v).clamp(0.0, 1.0)
    t = ((sxf + one_minus_s) * v).clamp(0.0, 1.0)
    p = (one_minus_s * v).clamp(0.0, 1.0)

    def pick(choices: tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]) -> Tensor:
        out = choices[5]
        for k in range(4, -1, -1):
            out = torch.where(i == k, choices[k], out)
        return out

    red = pick((v, q, p, p, t, v))
    green = pick((t, v, v, q, p, p))
    blue = pick((p, p, t, v, v, q))
    return torch.stack((red, green, blue), dim=-3)


def adjust_hue(x: Tensor, factor: Tensor | float) -> Tensor:
    """Shift hue by a per-sample factor in [-0.5, 0.5] (RGB -> HSV -> RGB).

    A factor of exactly 0 returns the sample unchanged, like torchvision's early exit (the HSV
    round trip is not bit-exact).
    """
    x = to_float(x)
    shift = _per_sample(factor, x)
    hsv = _rgb_to_hsv(x)
    h, s, v = hsv.unbind(dim=-3)
    h = (h + shift.view(-1, 1, 1)).remainder(1.0)
    out = _hsv_to_rgb(torch.stack((h, s, v), dim=-3))
    return torch.where(_bview(shift == 0), x, out)


def apply_grayscale(x: Tensor, mask: Tensor) -> Tensor:
    """Replace the samples where ``mask`` ([B] bool) is True by their 3-channel grayscale."""
    x = to_float(x)
    return torch.where(_bview(mask.to(x.device)), rgb_to_grayscale(x, 3), x)


def random_grayscale(x: Tensor, p: float = 0.1, generator: torch.Generator | None = None) -> Tensor:
    """torchvision ``RandomGrayscale(p)`` with an independent draw per sample."""
    _check_images(x)
    return apply_grayscale(x, sample_bernoulli(x.shape[0], p, generator, x.device))


# ---------------------------------------------------------------------------------------------
# colour jitter
# ---------------------------------------------------------------------------------------------


@dataclass
class JitterParams:
    """Per-sample colour-jitter parameters.

    apply:   [n] bool, whether the sample is jittered at all (RandomApply p).
    factors: [n, 4] float32 (brightness, contrast, saturation, hue); identity 1, 1, 1, 0 for ops
             that are disabled.
    order:   [n, 4] int64, op index (BRIGHTNESS..HUE) applied at each of the 4 slots; a random
             permutation per sample.
    enabled: which ops are active at all (static, from the strengths), so disabled ops are
             skipped without looking at data; torchvision likewise skips ops whose range is None.
    """

    apply: Tensor
    factors: Tensor
    order: Tensor
    enabled: tuple[bool, bool, bool, bool] = (True, True, True, True)


def _jitter_range(value: float, center: float, clip_zero: bool) -> tuple[float, float] | None:
    # torchvision ColorJitter._check_input for a scalar strength.
    if value < 0:
        raise ValueError(f"jitter strength must be non-negative, got {value}")
    lo, hi = center - value, center + value
    if clip_zero:
        lo = max(lo, 0.0)
    return None if lo == hi == center else (lo, hi)


def jitter_ranges(
    brightness: float, contrast: float, saturation: float, hue: float
) -> tuple[tuple[float, float] | None, ...]:
    """Factor ranges ``U(max(0, 1 - v), 1 + v)`` (hue ``U(-h, h)``); None for a disabled op."""
    if hue > 0.5:
        raise ValueError(f"hue must be in [0, 0.5], got {hue}")
    return (
        _jitter_range(brightness, 1.0, True),
        _jitter_range(contrast, 1.0, True),
        _jitter_range(saturation, 1.0, True),
        _jitter_range(hue, 0.0, False),
    )


def sample_jitter_params(
    n: int,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> JitterParams:
    """Draw ``RandomApply([ColorJitter(b, c, s, h)], p)`` parameters for n samples."""
    dev = _device(generator, device)
    ranges = jitter_ranges(brightness, contrast, saturation, hue)
    apply = sample_bernoulli(n, p, generator, dev)
    identity = (1.0, 1.0, 1.0, 0.0)
    cols = []
    for rng, ident in zip(ranges, identity, strict=True):
        u = _rand((n,), generator, dev)  # drawn even when disabled: stream layout is fixed
        cols.append(torch.full_like(u, ident) if rng is None else rng[0] + (rng[1] - rng[0]) * u)
    factors = torch.stack(cols, dim=1)
    # Argsort of iid uniforms is a uniformly random permutation per sample (torch.randperm(4)).
    order = _rand((n, 4), generator, dev).argsort(dim=1)
    b, c, s, h = (rng is not None for rng in ranges)
    return JitterParams(apply=apply, factors=factors, order=order, enabled=(b, c, s, h))


def apply_color_jitter(x: Tensor, params: JitterParams, gather: bool | None = None) -> Tensor:
    """Apply the four jitter ops in each sample's own order (4 slots x 4 ops).

    ``gather`` (default: on the CPU) computes each op only for the samples that are jittered
    and hold it at a slot, through data-dependent gathers; the results are identical to the
    GPU default, which computes every op for every sample and where-selects (no host
    synchronisation).

    Brightness, contrast and saturation are all ``clamp(x * f + target * (1 - f))`` with target 0,
    the mean grey level or the grey image, so one blend per slot serves the three of them.
    """
    _check_images(x)
    x = to_float(x)
    dev = x.device
    factors = params.factors.to(device=dev, dtype=torch.float32)
    order = params.order.to(dev)
    apply = params.apply.to(dev)
    if gather if gather is not None else dev.type == "cpu":
        return _color_jitter_gathered(x, factors, order, apply, params.enabled)
    out = x
    for slot in range(4):
        op = order[:, slot]
        new = _linear_jitter(out, op, factors, params.enabled)
        if params.enabled[HUE]:
            new = torch.where(_bview(op == HUE), adjust_hue(out, factors[:, HUE]), new)
        out = new
    return torch.where(_bview(apply), out, x)


def _linear_jitter(x: Tensor, op: Tensor, factors: Tensor, enabled: Sequence[bool]) -> Tensor:
    """Brightness / contrast / saturation for the samples whose ``op`` is one of them (an
    enabled one); the others are returned as they are."""
    if not any(enabled[:3]):
        return x
    is_lin = torch.zeros_like(op, dtype=torch.bool)
    for k in (BRIGHTNESS, CONTRAST, SATURATION):
        if enabled[k]:
            is_lin = is_lin | (op == k)
    op4 = _bview(op)
    gray = rgb_to_grayscale(x)
    mean = gray.mean(dim=(-3, -2, -1), keepdim=True)
    target = torch.where(
        op4 == CONTRAST, mean, torch.where(op4 == SATURATION, gray, torch.zeros_like(gray))
    )
    ratio = _bview(factors.gather(1, op.clamp(max=SATURATION)[:, None]))
    return torch.where(_bview(is_lin), _blend(x, target, ratio), x)


def _color_jitter_gathered(
    x: Tensor, factors: Tensor, order: Tensor, apply: Tensor, enabled: Sequence[bool]
) -> Tensor:
    # on the CPU a data-dependent gather costs nothing, and the HSV round trip of hue dominates
    # the jitter: only jittered samples are touched, and at each slot only with their own op
    rows = apply.nonzero().squeeze(1)
    if len(rows) == 0:
        return x
    y, factors, order = x[rows], factors[rows], order[rows]
    for slot in range(4):
        op = order[:, slot]
        # each sample gets one op per slot, so the groups are disjoint and update y in place
        lin = (op < HUE).nonzero().squeeze(1)
        hue = (op == HUE).nonzero().squeeze(1)
        if len(lin) and any(enabled[:3]):
            y[lin] = _linear_jitter(y[lin], op[lin], factors[lin], enabled)
        if len(hue) and enabled[HUE]:
            y[hue] = adjust_hue(y[hue], factors[hue, HUE])
    out = x.clone()
    out[rows] = y
    return out


def color_jitter(
    x: Tensor,
    brightness: float = 0.4,
    contrast: float = 0.4,
    saturation: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([ColorJitter(brightness, contrast, saturation, hue)], p)`` per sample."""
    _check_images(x)
    params = sample_jitter_params(
        x.shape[0], brightness, contrast, saturation, hue, p, generator, x.device
    )
    return apply_color_jitter(x, params)


# ---------------------------------------------------------------------------------------------
# gaussian blur
# ---------------------------------------------------------------------------------------------


def default_blur_kernel_size(size: int) -> int:
    """Odd integer nearest to 10% of ``size`` (SimCLR's rule: 23 for 224, 3 for 32)."""
    return int(size / 10) // 2 * 2 + 1


def _gaussian_kernel1d(kernel_size: int, sigma: Tensor) -> Tensor:
    # torchvision's _get_gaussian_kernel1d with one sigma per sample -> [B, k].
    lim = (kernel_size - 1) / (2.0 * math.sqrt(2.0))
    xs = torch.linspace(-lim, lim, steps=kernel_size, dtype=torch.float32, device=sigma.device)
    return torch.softmax(xs[None, :].div(sigma[:, None]).pow(2).neg(), dim=-1)


def sample_blur_params(
    n: int,
    p: float,
    sigma: tuple[float, float] = (0.1, 2.0),
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(apply [n] bool, sigma [n] float32)`` for ``RandomApply([GaussianBlur(k, sigma)], p)``."""
    dev = _device(generator, device)
    apply = sample_bernoulli(n, p, generator, dev)
    return apply, _uniform(n, sigma[0], sigma[1], generator, dev)


def apply_gaussian_blur(
    x: Tensor,
    sigma: Tensor,
    apply: Tensor | None = None,
    kernel_size: int | None = None,
    gather: bool | None = None,
) -> Tensor:
    """Per-sample separable Gaussian blur with reflect padding (torchvision ``gaussian_blur``).

    The batch is folded into the channel axis so a single grouped conv (groups = B * C) applies
    every sample's own kernel; reflect padding and the 2-D Gaussian are both separable, so two
    1-D convs equal torchvision's 2-D conv. ``gather`` (default: on the CPU) blurs only the
    samples in ``apply``; the result is the same.
    """
    _check_images(x)
    x = to_float(x)
    sigma = sigma.to(device=x.device, dtype=torch.float32).expand(x.shape[0])
    if apply is not None and (gather if gather is not None else x.device.type == "cpu"):
        rows = apply.to(x.device).nonzero().squeeze(1)
        out = x.clone()
        if len(rows):
            out[rows] = apply_gaussian_blur(x[rows], sigma[rows], None, kernel_size, False)
        return out
    b, c, height, width = x.shape
    ky = kernel_size or default_blur_kernel_size(height)
    kx = kernel_size or default_blur_kernel_size(width)
    if ky % 2 == 0 or kx % 2 == 0:
        raise ValueError(f"kernel size must be odd, got {kernel_size}")
    ker_y = _gaussian_kernel1d(ky, sigma).repeat_interleave(c, dim=0).view(b * c, 1, ky, 1)
    ker_x = _gaussian_kernel1d(kx, sigma).repeat_interleave(c, dim=0).view(b * c, 1, 1, kx)
    flat = x.reshape(1, b * c, height, width)
    flat = F.pad(flat, (kx // 2, kx // 2, ky // 2, ky // 2), mode="reflect")
    flat = F.conv2d(flat, ker_y, groups=b * c)
    flat = F.conv2d(flat, ker_x, groups=b * c)
    # Normalised kernel keeps values in range up to rounding; clamp keeps the [0, 1] contract.
    out = flat.view(b, c, height, width).clamp_(0.0, 1.0)
    if apply is None:
        return out
    return torch.where(_bview(apply.to(x.device)), out, x)


def gaussian_blur(
    x: Tensor,
    p: float = 0.5,
    sigma: tuple[float, float] = (0.1, 2.0),
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``RandomApply([GaussianBlur(kernel_size, sigma)], p)`` per sample; the default kernel
    size is the odd integer nearest 10% of the image side."""
    _check_images(x)
    apply, sig = sample_blur_params(x.shape[0], p, sigma, generator, x.device)
    return apply_gaussian_blur(x, sig, apply, kernel_size)


# ---------------------------------------------------------------------------------------------
# probe augmentation: RandomCrop(size, padding) + RandomHorizontalFlip(0.5)
# ---------------------------------------------------------------------------------------------


def sample_pad_crop_params(
    n: int,
    padding: int = 4,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """``(offsets [n, 2] int64 (top, left) in [0, 2 * padding], flip [n] bool with p 0.5)``."""
    dev = _device(generator, device)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator, device=dev)
    return offsets, sample_bernoulli(n, 0.5, generator, dev)


def apply_pad_crop_flip(x: Tensor, offsets: Tensor, flip: Tensor, padding: int = 4) -> Tensor:
    """Zero-pad by ``padding``, crop the original size at ``offsets`` (top, left in the padded
    image), then mirror where ``flip``. The crop is a pair of gathers; the flip is folded into the
    column index, so no per-sample loop or extra pass is needed."""
    _check_images(x)
    x = to_float(x)
    b, c, height, width = x.shape
    dev = x.device
    offsets = offsets.to(device=dev, dtype=torch.int64)
    padded = F.pad(x, (padding, padding, padding, padding))  # fill 0, as RandomCrop's default
    rows = offsets[:, :1] + torch.arange(height, device=dev)  # [B, H]
    cols = offsets[:, 1:] + torch.arange(width, device=dev)  # [B, W]
    cols = torch.where(flip.to(dev)[:, None], cols.flip(-1), cols)
    padded_w = width + 2 * padding
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, height, padded_w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, height, width))


def pad_crop_flip(x: Tensor, padding: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """torchvision ``RandomCrop(size, padding=padding)`` + ``RandomHorizontalFlip()`` per sample."""
    _check_images(x)
    offsets, flip = sample_pad_crop_params(x.shape[0], padding, generator, x.device)
    return apply_pad_crop_flip(x, offsets, flip, padding)


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor) -> Tensor:
    """``(x - mean) / std`` per channel (torchvision ``normalize``)."""
    x = to_float(x)
    if isinstance(mean, Tensor) or isinstance(std, Tensor):
        m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s
    # Python scalars per channel: no host-to-device copy of a constant table.
    channels = [(x[:, k] - float(mean[k])) / float(std[k]) for k in range(x.shape[1])]
    return torch.stack(channels, dim=1)


# ---------------------------------------------------------------------------------------------
# full contrastive view (SDCLR / SimCLR train transform)
# ---------------------------------------------------------------------------------------------


@dataclass
class ContrastiveAugmentConfig:
    """SDCLR CIFAR defaults: RandomResizedCrop(32, (0.1, 1)), flip, RandomApply(ColorJitter(0.4,
    0.4, 0.4, 0.1), 0.8), RandomGrayscale(0.2); blur is for 224 px data (SimCLR uses p 0.5)."""

    size: int = 32
    scale: tuple[float, float] = (0.1, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)


@dataclass
class ContrastiveParams:
    """All per-sample parameters of one contrastive view."""

    boxes: Tensor  # [n, 4] int64 (top, left, h, w)
    flip: Tensor  # [n] bool
    jitter: JitterParams
    gray: Tensor  # [n] bool
    blur: Tensor  # [n] bool
    blur_sigma: Tensor  # [n] float32


def sample_contrastive_params(
    n: int,
    height: int,
    width: int,
    cfg: ContrastiveAugmentConfig,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> ContrastiveParams:
    """Draw every parameter of :func:`contrastive_view` in a fixed order from one generator."""
    dev = _device(generator, device)
    heights = torch.full((n,), height, dtype=torch.int64, device=dev)
    widths = torch.full((n,), width, dtype=torch.int64, device=dev)
    return sample_contrastive_params_sized(heights, widths, cfg, generator)


def sample_contrastive_params_sized(
    heights: Tensor,
    widths: Tensor,
    cfg: ContrastiveAugmentConfig,
    generator: torch.Generator | None = None,
) -> ContrastiveParams:
    """:func:`sample_contrastive_params` for images of different sizes (decoded files): the
    crop boxes follow each image's own size; the draws are the same in number and order."""
    n, dev = len(heights), heights.device
    boxes = sample_crop_boxes_sized(heights, widths, cfg.scale, cfg.ratio, generator)
    flip = sample_bernoulli(n, cfg.flip_p, generator, dev)
    jitter = sample_jitter_params(n, *cfg.jitter, p=cfg.jitter_p, generator=generator, device=dev)
    gray = sample_bernoulli(n, cfg.gray_p, generator, dev)
    blur, sigma = sample_blur_params(n, cfg.blur_p, cfg.blur_sigma, generator, dev)
    return ContrastiveParams(boxes, flip, jitter, gray, blur, sigma)


def apply_contrastive(
    x: Tensor,
    params: ContrastiveParams,
    cfg: ContrastiveAugmentConfig,
    gather: bool | None = None,
) -> Tensor:
    """crop+resize -> flip -> jitter -> grayscale -> blur with explicit parameters."""
    out = resized_crop_boxes(x, params.boxes, cfg.size)
    return apply_photometric(out, params, cfg, gather)


def apply_photometric(
    x: Tensor,
    params: ContrastiveParams,
    cfg: ContrastiveAugmentConfig,
    gather: bool | None = None,
) -> Tensor:
    """flip -> jitter -> grayscale -> blur of already cropped images (``params.boxes`` is not
    used). ``gather``: see :func:`apply_color_jitter` (default: on the CPU)."""
    out = apply_horizontal_flip(x, params.flip)
    out = apply_color_jitter(out, params.jitter, gather)
    out = apply_grayscale(out, params.gray)
    if cfg.blur_p > 0:  # static switch: CIFAR configs skip the conv entirely
        out = apply_gaussian_blur(out, params.blur_sigma, params.blur, gather=gather)
    return out


def _apply_contrastive_traceable(
    x: Tensor, params: ContrastiveParams, cfg: ContrastiveAugmentConfig
) -> Tensor:
    return apply_contrastive(x, params, cfg, gather=False)


def _apply_photometric_traceable(
    x: Tensor, params: ContrastiveParams, cfg: ContrastiveAugmentConfig
) -> Tensor:
    return apply_photometric(x, params, cfg, gather=False)


@functools.cache
def compiled_apply(photometric_only: bool = False) -> Callable:
    """``torch.compile`` of :func:`apply_contrastive` (or :func:`apply_photometric`) in its
    gather-free form: one graph, no host synchronisation, and dozens of small elementwise
    kernels (the HSV round trips of the jitter above all) fused into a few. The draws stay
    outside, eager, on the caller's generator. Compiled once per process; shapes and configs
    that change recompile as torch.compile does."""
    fn = _apply_photometric_traceable if photometric_only else _apply_contrastive_traceable
    return torch.compile(fn)


def contrastive_view(
    x_uint8: Tensor,
    cfg: ContrastiveAugmentConfig,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
    compiled: bool = False,
) -> Tensor:
    """One random contrastive view of a batch: float32 ``[B, 3, size, size]`` in [0, 1].
    With ``shard``, ``x_uint8`` is this rank's chunk of the global batch (see :class:`Shard`);
    ``compiled`` applies the parameters with :func:`compiled_apply`."""
    _check_images(x_uint8)
    b, _, height, width = x_uint8.shape
    n = global_count(b, shard)
    params = sample_contrastive_params(n, height, width, cfg, generator, x_uint8.device)
    if shard is not None:
        params = take_samples(params, shard.part(b))
    if compiled:
        return compiled_apply()(x_uint8, params, cfg)
    return apply_contrastive(x_uint8, params, cfg)
