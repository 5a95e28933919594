"""BYOL's objective: the prediction of one view regresses the target of the other."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdclr.utils.precision import upcast_half


def byol_loss(p: torch.Tensor, z: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """2 - 2 cos(p_i, z_i) (z carries no gradient): its mean over the batch, or with
    ``reduction="none"`` the [B] per-sample values."""
    p = F.normalize(upcast_half(p), dim=1)
    z = F.normalize(upcast_half(z.detach()), dim=1)
    per_sample = 2 - 2 * (p * z).sum(1)
    return per_sample if reduction == "none" else per_sample.mean()
