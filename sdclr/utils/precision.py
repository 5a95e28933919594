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


def upcast_half(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 (autocast outputs) as float32, where the losses compute; float32 and
    float64 as they are, so that double-precision checks stay exact."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def input_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype inputs of ``module`` are cast to outside autocast: its parameters' (float32
    in training and evaluation; float64 in the suite's double-precision checks)."""
    p = next(module.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32
