"""Export a pretrained encoder (the dense branch, no projection head) for use without sdclr.

:func:`export_timm` (``sdclr-export CHECKPOINT --out DIR``) writes ``DIR/model.safetensors``
(timm key names) and ``DIR/config.json`` in the layout timm's Hugging Face Hub and
``local-dir:`` loading reads: ``architecture``, ``num_classes`` 0, ``model_args`` (the stage
widths, where not timm's) and a ``pretrained_cfg`` with the input size, the data's mean and
std and the evaluation crop, so ``timm.data.resolve_data_config(model=m)`` gives the
preprocessing the suite evaluates with.

The CIFAR stem (3x3 stride-1 ``conv1``, no max-pool; :func:`sdclr.models.backbone.
apply_cifar_stem`) is not a timm option: no ResNet argument builds it, so ``config.json``
cannot ask timm for it. An ImageNet-stem export loads in one line; a CIFAR-stem one in three
(build from ``config.json``, swap the stem in, load the weights). :func:`load_lines` writes
them; ``config.json`` holds them (``sdclr.load``, ``DIR`` standing for the folder) and says so
in ``pretrained_cfg.notes``.

:func:`export_backbone` (``--format pth``) writes the older plain state dict ``OUT`` and
``OUT.json`` (the statements that build the model for it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from sdclr.errors import SdclrError
from sdclr.models.backbone import dense_state_dict
from sdclr.models.checkpoint import check_checkpoint_file, load_encoder
from sdclr.utils.io import write_atomically

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


class ExportError(SdclrError):
    """The export's destination cannot be written, or already holds an export."""


def export_timm(checkpoint: str | Path, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Write ``out/model.safetensors`` and ``out/config.json`` (see the module docstring);
    returns the config. An existing export in ``out`` is replaced only with ``force``."""
    check_checkpoint_file(checkpoint)
    out = Path(out).expanduser()
    targets = [out / WEIGHTS, out / CONFIG]
    _check_destination(out, targets, force)
    model, payload = load_encoder(checkpoint)
    state = {k: v.contiguous() for k, v in dense_state_dict(model.backbone).items()}
    config = timm_config(payload, state, model.backbone, checkpoint)
    _make_folder(out)
    _write(out / WEIGHTS, lambda p: safetensors.torch.save_file(state, p, {"format": "pt"}))
    _write(out / CONFIG, lambda p: Path(p).write_text(json.dumps(config, indent=2) + "\n"))
    return config


def export_backbone(checkpoint: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write ``out`` (a timm state_dict) and ``out.json`` (how to build the model for it)."""
    check_checkpoint_file(checkpoint)
    out = Path(out).expanduser()
    if out.is_dir():
        raise ExportError(f"{out} is a folder; --format pth writes a file, e.g. {out}/backbone.pth")
    info_path = out.with_suffix(out.suffix + ".json")
    _check_destination(out.parent, [out, info_path], force)
    model, payload = load_encoder(checkpoint)
    spec = payload["spec"]
    state = dense_state_dict(model.backbone)
    _make_folder(out.parent)
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
                f"; m.conv1 = {cifar_stem_conv('m.conv1.out_channels')};"
                " m.maxpool = torch.nn.Identity()"
                if spec["cifar_stem"]
                else ""
            )
            + f"; m.load_state_dict(torch.load('{out.name}'))"
        ),
    }
    _write(out, lambda p: torch.save(state, p))
    _write(info_path, lambda p: Path(p).write_text(json.dumps(info, indent=2)))
    return info


def cifar_stem_conv(width: int | str) -> str:
    """The CIFAR stem's ``conv1`` as Python source, ``width`` output channels (a number or an
    expression): what every printed load statement builds in place of timm's stem."""
    return f"torch.nn.Conv2d(3, {width}, 3, 1, 1, bias=False)"


def load_lines(cifar_stem: bool, stem_width: int, folder: str = "DIR") -> list[str]:
    """The statements (after ``import timm, torch``) that load an export in ``folder``."""
    if not cifar_stem:
        return [f"model = timm.create_model({'local-dir:' + folder!r}, pretrained=True)"]
    return [
        f"model = timm.create_model({'local-dir:' + folder!r})",
        f"model.conv1, model.maxpool = {cifar_stem_conv(stem_width)}, torch.nn.Identity()",
        f"timm.models.load_checkpoint(model, {folder + '/' + WEIGHTS!r})",
    ]


def timm_config(
    payload: dict[str, Any],
    state: dict[str, torch.Tensor],
    backbone: torch.nn.Module,
    checkpoint: str | Path,
) -> dict[str, Any]:
    """``config.json`` of an export: timm's fields, and sdclr's own under ``sdclr``."""
    spec = payload["spec"]
    size = int(spec["image_size"])
    cifar = bool(spec["cifar_stem"])
    resize = ((payload.get("config") or {}).get("data") or {}).get("eval_resize")
    stem_width = int(state["conv1.weight"].shape[0])
    notes = [
        "Exported by sdclr-export: the dense encoder of an sdclr pretrain checkpoint, no "
        "projection head (num_classes 0: the model returns pooled features)."
    ]
    if cifar:
        notes.append(
            f"CIFAR stem: conv1 is a 3x3 stride-1 conv (padding 1, {stem_width} channels) and "
            f"there is no max-pool; timm cannot build this from a config, so set "
            f"model.conv1 = {cifar_stem_conv(stem_width)} and "
            f"model.maxpool = torch.nn.Identity() before loading {WEIGHTS} (see sdclr.load)."
        )
    pretrained_cfg = {
        "tag": "sdclr",
        "custom_load": False,
        "input_size": [3, size, size],
        "fixed_input_size": False,
        # the suite's evaluation view: the image as it is, or Resize(eval_resize, bilinear)
        # + CenterCrop(image_size) (sdclr.augment.views.eval_view)
        "interpolation": "bilinear",
        "crop_pct": size / float(resize) if resize else 1.0,
        "crop_mode": "center",
        "mean": [float(v) for v in spec["mean"]],
        "std": [float(v) for v in spec["std"]],
        "num_classes": 0,
        "pool_size": [_pooled_size(size, cifar)] * 2,
        "first_conv": "conv1",
        "classifier": "fc",
        "notes": notes,
    }
    config: dict[str, Any] = {
        "architecture": spec["backbone"],
        "num_classes": 0,
        "num_features": int(backbone.num_features),
        "global_pool": "avg",
    }
    if spec["channels"]:
        config["model_args"] = {"channels": [int(c) for c in spec["channels"]]}
    config["pretrained_cfg"] = pretrained_cfg
    config["sdclr"] = {
        "cifar_stem": cifar,
        "stem_width": stem_width,
        "load": ["import timm, torch", *load_lines(cifar, stem_width)],
        "checkpoint": str(Path(checkpoint).expanduser().resolve()),
        "epoch": payload.get("epoch"),
        "source": payload.get("source"),
        "spec": spec,
    }
    return config


def _pooled_size(size: int, cifar_stem: bool) -> int:
    """The side of the last feature map: each stride-2 step (padded) rounds up."""
    steps = 3 if cifar_stem else 5  # layer2-4, plus the stem conv and max-pool
    for _ in range(steps):
        size = (size + 1) // 2
    return size


def _check_destination(folder: Path, targets: list[Path], force: bool) -> None:
    """``folder`` is not a file, and ``targets`` are not there unless ``force``."""
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"cannot write the export into {folder}: it is a file, not a folder")
    existing = [p for p in targets if p.exists()]
    if existing and not force:
        names = ", ".join(p.name for p in existing)
        raise ExportError(
            f"{folder} already holds an export ({names}); pass --force to replace it, or "
            f"another --out"
        )


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(
            f"cannot write the export into {folder} ({e.strerror or e}); pass a writable --out"
        ) from e


def _write(path: Path, write) -> None:
    """``write(tmp)`` then rename over ``path``: a failed write leaves no half file."""
    try:
        write_atomically(path, lambda tmp: write(str(tmp)))
    except OSError as e:
        raise ExportError(f"cannot write {path} ({e.strerror or e}); pass a writable --out") from e
