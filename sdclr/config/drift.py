"""Config drift: whether a resumed run asks for what its checkpoint was trained with.

A resume whose config differs in anything that changes results is refused with the list of
differing keys (``resume.force=true`` overrides); where things live, how they are logged and
how often they are saved may differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sdclr.config.schema import Config

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
    "distributed",
    "sweep",
    "linear.eval_batch_size",
    "fewshot.eval_batch_size",
    "knn.batch_size",
    "embed.batch_size",
    # the kNN monitor and the diagnostics measure in eval mode without a random draw
    "monitor",
)


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
