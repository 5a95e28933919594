"""Mixed precision in one place: the autocast context every forward pass uses."""

from __future__ import annotations

import torch


def autocast(device_type: str, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``amp_dtype`` (bf16 on CUDA by default), or a no-op for float32."""
    return torch.autocast(
        device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    )


def full_precision(device_type: str) -> torch.autocast:
    """Autocast off: the contrastive logits (similarities / temperature) are computed in
    float32 even inside a bf16 step, as the losses' numerics assume."""
    return torch.autocast(device_type, enabled=False)
