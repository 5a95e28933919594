"""A tiny finished pretrain checkpoint for the export tests (tests/models/test_export.py,
tests/cli/test_export.py): a narrow ResNet-18 with dual BN whose every weight and running
statistic is random, the two BN copies different, so the export must pick the dense one."""

from __future__ import annotations

from pathlib import Path

import torch

from sdclr.models.checkpoint import build_from_spec, save_checkpoint

MEAN, STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def tiny_spec(cifar_stem: bool = True, image_size: int = 32) -> dict:
    return {
        "backbone": "resnet18",
        "cifar_stem": cifar_stem,
        "channels": [8, 16, 32, 64],
        "head_depth": 3,
        "out_dim": 16,
        "dual_bn": True,
        "image_size": image_size,
        "mean": MEAN,
        "std": STD,
    }


def write_tiny_checkpoint(path: Path, seed: int = 0, eval_resize: int | None = None, **spec_kw):
    """A checkpoint as the pretrain stage leaves it (model, spec, config, finished); returns
    its path."""
    spec = tiny_spec(**spec_kw)
    torch.manual_seed(seed)
    model = build_from_spec(spec)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                fresh = torch.randn(t.shape, generator=g) * 0.2
                if name.endswith(("running_var", ".weight")) and ".bn." in name:
                    fresh = fresh.abs() + 0.5  # BN scales and variances stay positive
                t.copy_(fresh)
    save_checkpoint(
        Path(path),
        {
            "model": model.state_dict(),
            "spec": spec,
            "config": {"data": {"eval_resize": eval_resize}},
            "epoch": 2,
            "finished": True,
        },
    )
    return Path(path)
