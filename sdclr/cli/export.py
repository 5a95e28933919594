"""``python scripts/export_backbone.py CHECKPOINT OUT``: the dense encoder of a pretrain
checkpoint as a plain timm state_dict (:func:`sdclr.models.export.export_backbone`)."""

from __future__ import annotations

import argparse
import sys

from sdclr.errors import SdclrError
from sdclr.models.export import export_backbone


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
