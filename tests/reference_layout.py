"""Checkpoints in the reference code's layout (VITA-Group/SDCLR ``train_simCLR.py``), written
from our own dual-BN model for the tests of sdclr/models/reference.py. The key names are
written out from the reference's models (resnet_prune_multibn.py: batch_norm_multiple,
Downsample_multiple, proj_head), independently of the code under test."""

from __future__ import annotations

from pathlib import Path

import torch

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
_HEAD = {"0": "fc.fc1", "1": "fc.bn1", "3": "fc.fc2", "4": "fc.bn2", "6": "fc.fc3", "7": "fc.bn3"}


def reference_key(key: str) -> str:
    """Our dual-BN key -> the reference's (DDP-wrapped) name for it."""
    key = key.replace("backbone.", "", 1)
    key = key.replace(".bn.0.", ".bn_list.0.").replace(".bn.1.", ".bn_list.1.")
    key = key.replace("downsample.0.", "downsample.conv.").replace(
        "downsample.1.", "downsample.bn."
    )
    if key.startswith("head."):
        _, index, rest = key.split(".", 2)
        key = f"{_HEAD[index]}.{rest}"
    return f"module.{key}"


def write_reference_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """``model`` saved as the reference saves its ``model_<epoch>.pt``: its state dict under
    the reference's names, with the ImageNet normalisation buffers its ResNet carries."""
    state = {reference_key(k): v.clone() for k, v in model.state_dict().items()}
    state["module.normalize.mean"] = torch.tensor(IMAGENET_MEAN)
    state["module.normalize.std"] = torch.tensor(IMAGENET_STD)
    torch.save({"epoch": 2000, "state_dict": state, "optim": {}}, path)
    return path
