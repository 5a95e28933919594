"""Checkpoints: written atomically, carrying what is needed to rebuild the model.

The pretrain checkpoint (written by :func:`sdclr.train.loop.pretrain`) holds the online model
(``model``, what the probes and the export use), the optimiser, ``method_state`` (MoCo's key
encoder, queue and pointer, BYOL's target and predictor, the current momentum; empty for
SimCLR / SDCLR), the mask, the BCL loss memory (``boost``), the temperatures, the monitor's
records, the position in the epoch, every RNG state, and ``spec`` / ``config``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from sdclr.config.derived import bn_mode, cifar_stem, head_depth
from sdclr.errors import CheckpointError
from sdclr.models.contrastive import ContrastiveModel, build_model


def model_spec(cfg) -> dict[str, Any]:
    """Everything that fixes the network's shape; stored in every checkpoint."""
    return {
        "backbone": str(cfg.backbone.name),
        "cifar_stem": cifar_stem(cfg),
        "channels": list(cfg.backbone.channels) if cfg.backbone.channels else None,
        "head_depth": head_depth(cfg),
        "out_dim": int(cfg.head.out_dim),
        "dual_bn": bn_mode(cfg) == "dual",
        "image_size": int(cfg.data.image_size),
        "mean": list(cfg.data.mean),
        "std": list(cfg.data.std),
    }


def build_from_spec(spec: dict[str, Any]) -> ContrastiveModel:
    return build_model(
        spec["backbone"],
        spec["cifar_stem"],
        spec["channels"],
        spec["head_depth"],
        spec["out_dim"],
        spec["dual_bn"],
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file and rename, so a crash never leaves a half checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} not found; pass the pretrain checkpoint of "
            f"a finished job (its checkpoints/pretrain.pt)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({e}); it is corrupt or not an sdclr checkpoint"
        ) from e
    if not isinstance(payload, dict) or "model" not in payload or "spec" not in payload:
        raise CheckpointError(
            f"{path} is not an sdclr pretrain checkpoint (no model/spec); "
            f"pass a job's checkpoints/pretrain.pt"
        )
    return payload


def load_encoder(
    path: str | Path, expected_backbone: str | None = None
) -> tuple[ContrastiveModel, dict[str, Any]]:
    """Rebuild the model from a checkpoint and check it is the backbone the run asks for."""
    payload = load_checkpoint(path)
    if payload.get("finished") is False:
        raise CheckpointError(
            f"checkpoint {path} is from an unfinished pretraining (epoch {payload['epoch']}); "
            f"resume it first (run its command again), then evaluate"
        )
    spec = payload["spec"]
    if expected_backbone is not None and spec["backbone"] != expected_backbone:
        raise CheckpointError(
            f"checkpoint {path} holds a {spec['backbone']} but backbone={expected_backbone} "
            f"was asked for; pass backbone={spec['backbone']} or a {expected_backbone} "
            f"checkpoint"
        )
    model = build_from_spec(spec)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit its recorded model ({e})") from e
    return model, payload
