"""BCL's memory of the training samples (Zhou et al., ICML 2022): an exponential moving average
of every sample's contrastive loss, indexed by dataset position, and the per-sample strengths
in [0, 1] it gives once per epoch, which drive the boosted augmentation of
:mod:`sdclr.augment.boost`."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor


class LossMemory:
    """Per-sample exponential moving average of the contrastive loss, indexed by dataset position.

    The memory stays on one device and is updated with tensor ops only. Indices within one update
    must be unique (a sampler without replacement); with DDP, all-gather indices and losses first
    so every rank holds the same memory.
    """

    def __init__(
        self, num_samples: int, momentum: float = 0.97, device: torch.device | str | None = None
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.ema = torch.zeros(num_samples, dtype=torch.float32, device=device)
        # First sight initialises instead of blending with the zero start (BCL's first epoch).
        self.seen = torch.zeros(num_samples, dtype=torch.bool, device=device)

    def __len__(self) -> int:
        return self.ema.shape[0]

    @property
    def device(self) -> torch.device:
        return self.ema.device

    def update(self, indices: Tensor, losses: Tensor) -> None:
        """``ema = m * ema + (1 - m) * loss`` for the batch's samples (``ema = loss`` at first
        sight); other samples are untouched."""
        idx = indices.to(device=self.device, dtype=torch.int64).reshape(-1)
        loss = losses.detach().to(device=self.device, dtype=torch.float32).reshape(-1)
        if idx.shape != loss.shape:
            raise ValueError(f"indices {tuple(idx.shape)} and losses {tuple(loss.shape)} differ")
        m = self.momentum
        blended = self.ema[idx] * m + loss * (1.0 - m)
        self.ema[idx] = torch.where(self.seen[idx], blended, loss)
        self.seen.index_fill_(0, idx, True)  # no host-to-device copy of a Python bool

    def strengths(self) -> Tensor:
        """:func:`strengths` over the samples seen so far; unseen samples (e.g. dropped by
        ``drop_last``) are treated as average, so they map to 0.5 like the mean."""
        seen = self.seen.to(torch.float32)
        mean = (self.ema * seen).sum() / seen.sum().clamp(min=1.0)
        return strengths(torch.where(self.seen, self.ema, mean))

    def state_dict(self) -> dict[str, Tensor | float]:
        return {"ema": self.ema.clone(), "seen": self.seen.clone(), "momentum": self.momentum}

    def load_state_dict(self, state: Mapping[str, Tensor | float]) -> None:
        ema, seen = state["ema"], state["seen"]
        if not isinstance(ema, Tensor) or not isinstance(seen, Tensor):
            raise TypeError("state must hold tensors 'ema' and 'seen'")
        if ema.shape != self.ema.shape or seen.shape != self.seen.shape:
            raise ValueError(
                f"memory holds {len(self)} samples, state has {tuple(ema.shape)} / "
                f"{tuple(seen.shape)}"
            )
        self.ema.copy_(ema.to(torch.float32))
        self.seen.copy_(seen.to(torch.bool))
        self.momentum = float(state.get("momentum", self.momentum))


def strengths(ema: Tensor) -> Tensor:
    """Per-sample augmentation strength in [0, 1] from the momentum losses (BCL's normalisation).

    BCL standardises over the dataset, divides by the largest magnitude and maps [-1, 1] to
    [0, 1] with ``(x + 1) / 2``. The std cancels in the middle step, so this computes the
    equivalent ``(x - mean) / max|x - mean|`` without dividing by a possibly tiny std: the
    highest-loss sample gets 1 or the lowest gets 0 (whichever lies farther from the mean), the
    mean maps to 0.5 and the order is preserved. Constant input (BCL's std 0, which gives NaN
    there) returns 0.5 everywhere, the value of a sample at the mean.
    """
    x = ema.to(torch.float32)
    centred = x - x.mean()
    scale = centred.abs().amax()
    unit = centred / torch.where(scale > 0, scale, torch.ones_like(scale))
    return ((unit + 1.0) * 0.5).clamp_(0.0, 1.0)
