"""What a batch of images becomes at each stage, for resident batches and decoded files alike.

A batch is either a uint8 tensor ``[B, 3, H, W]`` (resident data: every op is batched, see
:mod:`sdclr.augment.ops`) or a list of uint8 ``[3, H_i, W_i]`` tensors of different sizes (files
decoded per batch). For a list, the geometric step (crop box sampled per image from its own
size with torchvision's rule, then bicubic antialiased resize) runs image by image on the
device; everything after it (flip, jitter, grayscale, blur, normalisation) is batched.

* :func:`contrastive_view`: the pretraining view (protocol.md section 1);
* :func:`probe_train_view`: ``pad`` = pad-4 random crop + flip (CIFAR), ``resized`` =
  RandomResizedCrop(size) + flip (ImageNet);
* :func:`eval_view`: as is (CIFAR), or Resize(``resize``) + CenterCrop(size) (ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sdclr.augment.ops import (
    ContrastiveAugmentConfig,
    Shard,
    apply_horizontal_flip,
    apply_photometric,
    compiled_apply,
    pad_crop_flip,
    resized_crop_boxes,
    sample_bernoulli,
    sample_contrastive_params_sized,
    sample_crop_boxes,
    sample_crop_boxes_sized,
    take_samples,
    to_float,
)
from sdclr.augment.ops import contrastive_view as tensor_contrastive_view

# A batch of images: one resident uint8 tensor [B, 3, H, W], or decoded files of their own sizes
Batch = Tensor | list[Tensor]


def batch_size(x: Batch) -> int:
    return len(x)


def _device(x: Batch) -> torch.device:
    return x.device if isinstance(x, Tensor) else x[0].device


def _sizes(images: list[Tensor]) -> tuple[Tensor, Tensor]:
    dev = images[0].device
    hw = torch.tensor([list(im.shape[-2:]) for im in images], device=dev)
    return hw[:, 0], hw[:, 1]


def crop_resize_each(
    images: list[Tensor], boxes: Tensor, size: int, mode: str = "bicubic"
) -> Tensor:
    """Crop each image to its box and resize to ``size`` (``mode`` bicubic or bilinear,
    antialiased, clamped): float32 ``[B, 3, size, size]`` in [0, 1]."""
    out = []
    for img, (top, left, h, w) in zip(images, boxes.tolist()):  # one sync for the batch
        crop = to_float(img[None, :, top : top + h, left : left + w])
        out.append(F.interpolate(crop, size=(size, size), mode=mode, antialias=True).clamp_(0, 1))
    return torch.cat(out)


def resize_center_crop(img: Tensor, resize: int, size: int) -> Tensor:
    """torchvision Resize(resize) (shorter side, bilinear, antialiased) + CenterCrop(size), for
    one image or a batch, uint8 or float."""
    from torchvision.transforms.v2 import functional as TF

    return TF.center_crop(TF.resize(img, resize, antialias=True), [size, size])


def resize_center_crop_each(images: list[Tensor], resize: int, size: int) -> Tensor:
    """:func:`resize_center_crop` of each image: float32 ``[B, 3, size, size]`` in [0, 1]."""
    out = [resize_center_crop(to_float(img[None]), resize, size).clamp_(0, 1) for img in images]
    return torch.cat(out)


# --- the three views -------------------------------------------------------------------------


def contrastive_view(
    x: Batch,
    cfg: ContrastiveAugmentConfig,
    generator: torch.Generator | None = None,
    shard: Shard | None = None,
    compiled: bool = False,
) -> Tensor:
    """One random pretraining view: float32 ``[B, 3, size, size]`` in [0, 1]. With ``shard``,
    ``x`` is this rank's chunk of the global batch (:class:`sdclr.augment.ops.Shard`); ``compiled``
    applies the parameters through :func:`sdclr.augment.ops.compiled_apply`."""
    if isinstance(x, Tensor):
        return tensor_contrastive_view(x, cfg, generator, shard, compiled)
    heights, widths = _sizes(x)
    if shard is not None:
        # a box depends only on its own image's size and draws: the other ranks' images get
        # placeholder sizes, which change no draw of this rank's
        n, part = len(x) * shard.world, shard.part(len(x))
        heights = F.pad(heights, (part.start, n - part.stop), value=1)
        widths = F.pad(widths, (part.start, n - part.stop), value=1)
    p = sample_contrastive_params_sized(heights, widths, cfg, generator)
    if shard is not None:
        p = take_samples(p, shard.part(len(x)))
    out = crop_resize_each(x, p.boxes, cfg.size)
    if compiled:
        return compiled_apply(photometric_only=True)(out, p, cfg)
    return apply_photometric(out, p, cfg)


def probe_train_view(
    x: Batch,
    mode: str,
    size: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.08, 1.0),
) -> Tensor:
    """The linear probe's training augmentation. ``resized`` is torchvision's
    RandomResizedCrop(size) at its default (bilinear, antialiased) interpolation, as the
    protocol's ImageNet probe uses; pretraining crops are bicubic."""
    if mode == "pad":
        if not isinstance(x, Tensor):
            raise ValueError("the pad-4 crop needs equally sized images (data.probe_crop=resized)")
        return pad_crop_flip(to_float(x), 4, generator)
    if mode != "resized":
        raise ValueError(f"unknown probe crop mode {mode!r}")
    n, dev = len(x), _device(x)
    if isinstance(x, Tensor):
        boxes = sample_crop_boxes(n, x.shape[2], x.shape[3], scale, (3 / 4, 4 / 3), generator, dev)
        out = resized_crop_boxes(x, boxes, size, "bilinear")
    else:
        heights, widths = _sizes(x)
        boxes = sample_crop_boxes_sized(heights, widths, scale, (3 / 4, 4 / 3), generator)
        out = crop_resize_each(x, boxes, size, "bilinear")
    return apply_horizontal_flip(out, sample_bernoulli(n, 0.5, generator, dev))


def eval_view(x: Batch, size: int, resize: int | None) -> Tensor:
    """Validation / test images: as they are, or Resize(resize) + CenterCrop(size)."""
    if not isinstance(x, Tensor):
        return resize_center_crop_each(x, resize or size, size)
    if resize is None and x.shape[-2:] == (size, size):
        return to_float(x)
    # a resident (square-cached) batch: the central box that Resize + CenterCrop keeps,
    # resized as Resize does (bilinear, antialiased)
    h, w = x.shape[-2:]
    keep = size / float(resize or size)
    side = max(1, round(min(h, w) * keep))
    box = torch.tensor([(h - side) // 2, (w - side) // 2, side, side], device=x.device)
    return resized_crop_boxes(x, box.expand(len(x), 4), size, "bilinear")
