"""Export a pretrained encoder as a plain timm state_dict (dense branch, no head)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sdclr.models.backbone import dense_state_dict
from sdclr.models.checkpoint import load_encoder


def export_backbone(checkpoint: str | Path, out: str | Path) -> dict:
    """Write ``out`` (a timm state_dict) and ``out.json`` (how to build the model for it)."""
    model, payload = load_encoder(checkpoint)
    spec = payload["spec"]
    state = dense_state_dict(model.backbone)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, out)
    info = {
        "timm_name": spec["backbone"],
        "cifar_stem": spec["cifar_stem"],
        "channels": spec["channels"],
        "mean": spec["mean"],
        "std": spec["std"],
        "image_size": spec["image_size"],
        "load": (
            f"m = timm.create_model('{spec['backbone']}', num_classes=0"
            + (f", channels={tuple(spec['channels'])}" if spec["channels"] else "")
            + ")"
            + (
                "; m.conv1 = torch.nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False);"
                " m.maxpool = torch.nn.Identity()"
                if spec["cifar_stem"]
                else ""
            )
            + f"; m.load_state_dict(torch.load('{out.name}'))"
        ),
    }
    out.with_suffix(out.suffix + ".json").write_text(json.dumps(info, indent=2))
    return info
