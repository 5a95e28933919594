"""NT-Xent, the SimCLR loss, with negatives from the global batch across ranks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdclr.distributed import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the 2N anchors of -log(exp(s+/t) / sum_{j != anchor} exp(s_j/t)).

    ``z1[i]`` and ``z2[i]`` are the two views of image i. Every other vector of the global
    batch, from either branch, is a negative. Under torch.distributed each rank passes its
    local slice; features are gathered (gradients flow back to their owners) and each rank
    averages over its own anchors, which DDP's gradient averaging turns into the global mean.
    """
    z1 = F.normalize(z1.float(), dim=1)
    z2 = F.normalize(z2.float(), dim=1)
    local = z1.shape[0]
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2N, d]
    n = keys.shape[0] // 2
    offset = rank() * local if n != local else 0
    anchors = torch.cat([z1, z2])  # [2B, d]
    logits = anchors @ keys.t() / temperature
    idx = torch.arange(local, device=z1.device) + offset
    self_idx = torch.cat([idx, idx + n])
    pos_idx = torch.cat([idx + n, idx])
    rows = torch.arange(2 * local, device=z1.device)
    logits[rows, self_idx] = float("-inf")  # an anchor is not its own negative
    return F.cross_entropy(logits, pos_idx)
