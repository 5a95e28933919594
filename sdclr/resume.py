"""What makes a run resumable: RNG state capture, the config comparison, and signals.

A resumed run must produce what an uninterrupted one would have: every random stream that
affects training (Python, NumPy, torch CPU and CUDA, the augmentation generator) is saved in
checkpoints and restored, and a resume whose config differs in anything that changes results
is refused with the list of differing keys (``resume.force=true`` overrides).
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
from typing import Any

import numpy as np
import torch

from sdclr.errors import CheckpointError, SdclrError

# Keys that do not change what a run computes: where things are, how they are logged and how
# often they are saved. Everything else must match for a resume.
NON_RESULT_KEYS = (
    "data.root",
    "data.cache_dir",
    "data.format",
    "data.archive",
    "data.download",
    "logger",
    "debug",
    "smoke",
    "checkpoint.every",
    "pretrain.log_every",
    "stage",
    "resume",
    "device",
    "linear.eval_batch_size",
    "fewshot.eval_batch_size",
    # the kNN monitor and the diagnostics measure in eval mode without a random draw
    "monitor",
)


class Interrupted(SdclrError):
    """SIGTERM / SIGINT arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def _is_result_key(key: str) -> bool:
    return not any(key == k or key.startswith(k + ".") for k in NON_RESULT_KEYS)


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in _flatten(config).items() if _is_result_key(k)}


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(result_config(config), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _schema_defaults() -> dict[str, Any]:
    from omegaconf import OmegaConf

    from sdclr.config import Config

    return _flatten(OmegaConf.to_container(OmegaConf.structured(Config), resolve=False))


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every result-affecting key that differs. A key the
    saved config lacks (a checkpoint from before the key existed) counts only when its
    current value is not the schema's default, which is what the older code did."""
    a, b = result_config(saved), result_config(current)
    defaults = _schema_defaults()
    return [
        f"{k}: {a.get(k, '<absent>')!r} -> {b.get(k, '<absent>')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k) and not (k not in a and k in defaults and b[k] == defaults[k])
    ]


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
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
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        for i, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state, i)
    if saved is not None:
        generator.set_state(saved)


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the training loop checks after each step, so the
    loop can write a consistent checkpoint before exiting."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None
