"""``sdclr-export CHECKPOINT --out DIR``: the dense encoder of a pretrain checkpoint as
``DIR/model.safetensors`` + ``DIR/config.json``, which timm loads
(:func:`sdclr.models.export.export_timm`); ``--format pth`` writes the older plain state dict
``OUT`` + ``OUT.json`` instead (:func:`sdclr.models.export.export_backbone`).

``python scripts/export_backbone.py CHECKPOINT OUT`` (:func:`legacy_main`) is the pth export
under its old command line. Errors are one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from sdclr.errors import SdclrError
from sdclr.models.export import export_backbone, export_timm, load_lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sdclr-export",
        description="Export the dense encoder (no projection head) of an sdclr pretrain "
        "checkpoint for timm: DIR/model.safetensors and DIR/config.json (timm's local-dir / "
        "Hugging Face Hub layout, with the data's input size, mean and std).",
    )
    p.add_argument("checkpoint", help="a finished job's checkpoints/pretrain.pt")
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="folder to write (created if missing); with --format pth, the output file",
    )
    p.add_argument(
        "--format",
        choices=("safetensors", "pth"),
        default="safetensors",
        help="safetensors (default): the timm folder; pth: a plain torch state_dict file "
        "and OUT.json",
    )
    p.add_argument("--force", action="store_true", help="replace an existing export")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.format == "pth":
            info = export_backbone(args.checkpoint, args.out, force=args.force)
            print(f"wrote {args.out} ({info['timm_name']}); load it with:\n  {info['load']}")
            return 0
        config = export_timm(args.checkpoint, args.out, force=args.force)
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ours = config["sdclr"]
    lines = load_lines(ours["cifar_stem"], ours["stem_width"], str(args.out))
    stem = " (CIFAR stem: timm cannot build it from config.json, hence the stem swap)"
    print(
        f"wrote {args.out}/model.safetensors and config.json ({config['architecture']}, "
        f"{config['num_features']} features); load it with{stem if ours['cifar_stem'] else ''}:"
        + "".join(f"\n  {line}" for line in ["import timm, torch", *lines])
    )
    return 0


def legacy_main(argv: list[str] | None = None) -> int:
    """``scripts/export_backbone.py CHECKPOINT OUT [--force]``: ``--format pth``."""
    p = argparse.ArgumentParser(
        prog="scripts/export_backbone.py",
        description="Export the dense encoder of an sdclr pretrain checkpoint as a plain timm "
        "state_dict (sdclr-export CHECKPOINT --out OUT --format pth); sdclr-export "
        "CHECKPOINT --out DIR writes the safetensors folder timm loads.",
    )
    p.add_argument("checkpoint", help="a job's checkpoints/pretrain.pt")
    p.add_argument("out", help="output file, e.g. backbone.pth")
    p.add_argument("--force", action="store_true", help="replace an existing export")
    args = p.parse_args(argv)
    forward = [args.checkpoint, "--out", args.out, "--format", "pth"]
    return main(forward + (["--force"] if args.force else []))


if __name__ == "__main__":
    sys.exit(main())
