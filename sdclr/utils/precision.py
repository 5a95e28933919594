"""Numerics in one place: the training step's settings (autocast dtype, memory format,
torch.compile) and the autocast context every forward pass uses."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from sdclr.errors import ConfigError
from sdclr.utils.distributed import world_size


def autocast(device_type: str, amp_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast to ``amp_dtype`` (bf16 on CUDA by default), or a no-op for float32."""
    return torch.autocast(
        device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    )


def full_precision(device_type: str) -> torch.autocast:
    """Autocast off: the contrastive logits (similarities / temperature) are computed in
    float32 even inside a bf16 step, as the losses' numerics assume."""
    return torch.autocast(device_type, enabled=False)


def owned_upcast(t: torch.Tensor) -> torch.Tensor:
    """:func:`upcast_half` as a tensor of the caller's own: a compiled model's output under
    CUDA graphs (compile_mode=reduce-overhead) lives in memory that the next replay
    overwrites, so outputs kept across forward calls are copied."""
    up = upcast_half(t)
    return up.clone() if up is t else up


def upcast_half(t: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 (autocast outputs) as float32, where the losses compute; float32 and
    float64 as they are, so that double-precision checks stay exact."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def input_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype inputs of ``module`` are cast to outside autocast: its parameters' (float32
    in training and evaluation; float64 in the suite's double-precision checks)."""
    p = next(module.parameters(), None)
    return p.dtype if p is not None and p.is_floating_point() else torch.float32


@dataclass
class StepSettings:
    """Numerics of the training step: bf16 autocast and channels_last on CUDA by default,
    plain float32 on CPU."""

    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode for the model

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


NO_BF16 = (
    "precision=auto: this GPU ({name}) has no bfloat16 support, so the run computes in "
    "float32 (slower, same results); precision=fp32 says so explicitly"
)


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` (a CUDA device) computes in bfloat16 (compute capability 8.0+)."""
    return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def resolve_precision(requested: str, device: torch.device) -> str:
    """``precision`` as it runs: auto is bf16 on a GPU with bfloat16 (float32 elsewhere, with
    one warning on an older GPU); bf16 asked for on a GPU without it is refused."""
    if device.type != "cuda":
        return "fp32" if requested == "auto" else requested
    if bf16_supported(device):
        return "bf16" if requested == "auto" else requested
    name = torch.cuda.get_device_name(device)
    if requested == "bf16":
        raise ConfigError(
            f"config key 'precision': bf16 was asked for but this GPU ({name}) has no "
            f"bfloat16 support; use precision=fp32 (or auto)"
        )
    if requested == "auto":
        warnings.warn(NO_BF16.format(name=name), stacklevel=2)
        return "fp32"
    return requested


def step_settings(cfg, device: torch.device) -> StepSettings:
    cuda = device.type == "cuda"
    precision = resolve_precision(str(cfg.precision), device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    # auto: off under torchrun, where SyncBatchNorm breaks the compiled graph (pytorch#161302)
    compile_ = cfg.compile if cfg.compile is not None else cuda and world_size() == 1
    return StepSettings(
        torch.bfloat16 if precision == "bf16" else None,
        bool(channels_last),
        bool(compile_),
        str(cfg.compile_mode),
    )
