"""Mixed precision in one place: the autocast context every forward pass uses."""

from __future__ import annotations

import torch


def autocast(device_type: str, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``amp_dtype`` (bf16 on CUDA by default), or a no-op for float32."""
    return torch.autocast(
        device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    )
