"""Every random stream that affects training (Python, NumPy, torch CPU and CUDA, the
augmentation generator): seeded at the start, saved in checkpoints and restored, so that a
resumed run draws what an uninterrupted one would have."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from sdclr.errors import CheckpointError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _numpy_state() -> dict[str, Any]:
    """NumPy's global RNG state as a tensor and plain values (loadable with weights_only)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: Any) -> None:
    """Restore :func:`_numpy_state`, or the tuple of ``np.random.get_state()`` that
    checkpoints written before 2026-12 hold."""
    if isinstance(state, dict):
        keys = state["keys"].numpy().astype(np.uint32)
        state = (state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"])
    np.random.set_state(state)


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def restore_rng(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    saved = state.get("generator") if generator is not None else None
    if saved is not None and saved.numel() != generator.get_state().numel():
        # CPU and CUDA generators are different algorithms: the stream cannot carry over
        raise CheckpointError(
            f"the checkpoint was written by a run drawing its augmentations on another device "
            f"type than this one ({generator.device.type}); resume on the device type the run "
            f"started on (config key 'device'), or start a new run"
        )
    random.setstate(state["python"])
    _set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)
    if saved is not None:
        generator.set_state(saved)
