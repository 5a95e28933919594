"""Features of a frozen encoder under the evaluation view: what every read-out shares.

The linear and few-shot probes, the kNN monitor and the diagnostics all see images the same
way (:func:`sdclr.augment.views.eval_view`, then the dataset's normalisation) and forward
them in chunks, optionally under autocast. :class:`EvalSettings` holds that once;
:func:`extract_bank_features` applies it to an image bank (:mod:`sdclr.data.banks`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from sdclr.augment.ops import normalize
from sdclr.augment.views import eval_view
from sdclr.data.banks import Images
from sdclr.utils.precision import autocast, input_dtype

FILE_IMAGE_SIZE = 224  # the evaluation size of decoded image files when none is given


@dataclass(frozen=True)
class EvalSettings:
    """The classes and their Many / Medium / Few groups, and how images are seen: the
    evaluation view at ``size`` (None: the images' own size, 224 for files) after an optional
    Resize to ``resize``, normalised by ``mean`` / ``std``, forwarded ``batch_size`` at a time
    with the frozen backbone in ``amp_dtype`` (None: full precision)."""

    num_classes: int
    groups: dict[str, list[int]]
    mean: list[float]
    std: list[float]
    size: int | None = None
    resize: int | None = None
    batch_size: int = 512
    amp_dtype: torch.dtype | None = None

    def sized_for(self, bank: Images) -> EvalSettings:
        """These settings with ``size`` filled in from ``bank`` where it was left None."""
        if self.size is not None:
            return self
        size = bank.image_size
        return replace(self, size=FILE_IMAGE_SIZE if size is None else size)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised evaluation view of uint8 images ``x`` (``size`` must be set)."""
        return normalize(eval_view(x, self.size, self.resize), self.mean, self.std)


def encode(backbone: nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None) -> torch.Tensor:
    """Float32 features of the normalised images ``x`` (the probe's linear layer trains in
    float32; the backbone may run in ``amp_dtype`` or in its own dtype), in a tensor of the
    caller's own: under CUDA graphs a compiled backbone's output is overwritten by its next
    replay, and the chunks' features are kept until all are encoded."""
    with autocast(x.device.type, amp_dtype):
        out = backbone(x.to(input_dtype(backbone)))
    feats = out.float()
    return feats.clone() if feats is out else feats


@torch.no_grad()
def extract_bank_features(
    backbone: nn.Module,
    bank: Images,
    idx: torch.Tensor,
    settings: EvalSettings,
) -> torch.Tensor:
    """Features of ``bank[idx]`` under the evaluation view, ``settings.batch_size`` at a time."""
    settings = settings.sized_for(bank)
    step = settings.batch_size
    chunks = [idx[s : s + step] for s in range(0, len(idx), step)]
    feats = [encode(backbone, settings.view(x), settings.amp_dtype) for x in bank.batches(chunks)]
    if not feats:
        raise ValueError("no images to extract features from")
    return torch.cat(feats)
