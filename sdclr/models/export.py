"""Export a pretrained encoder as a plain timm state_dict (dense branch, no head)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from sdclr.errors import SdclrError
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Export the dense encoder of an sdclr pretrain checkpoint as a plain "
        "timm state_dict."
    )
    parser.add_argument("checkpoint", help="a job's checkpoints/pretrain.pt")
    parser.add_argument("out", help="output file, e.g. backbone.pth")
    args = parser.parse_args(argv)
    try:
        info = export_backbone(args.checkpoint, args.out)
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({info['timm_name']}); load it with:\n  {info['load']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
