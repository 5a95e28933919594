"""The contrastive network: backbone + projection head, with a dense and a pruned branch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from sdclr.backbone import (
    convert_dual_bn,
    create_backbone,
    feature_dim,
    projection_head,
    set_bn_branch,
)


class ContrastiveModel(nn.Module):
    """``forward(x, branch, masks)``: branch 0 is the dense network; branch 1 uses the second
    BN copy (dual BN) and, when ``masks`` is given, the conv weights multiplied by the mask.
    The pruned weights are computed on the fly (weight * mask), so gradients from the pruned
    branch reach the shared dense weights and the dense model itself is never zeroed."""

    def __init__(self, backbone: nn.Module, head: nn.Module, dual_bn: bool):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dual_bn = dual_bn
        if dual_bn:
            convert_dual_bn(self)

    def forward(
        self, x: torch.Tensor, branch: int = 0, masks: dict[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if self.dual_bn:
            set_bn_branch(self, branch)
        if masks:
            params = {name: getattr_path(self.backbone, name) * m for name, m in masks.items()}
            feats = functional_call(self.backbone, params, (x,), strict=False)
        else:
            feats = self.backbone(x)
        out = self.head(feats)
        if self.dual_bn:
            set_bn_branch(self, 0)  # evaluation and export always see the dense branch
        return out


def getattr_path(module: nn.Module, path: str) -> torch.Tensor:
    for part in path.split("."):
        module = getattr(module, part)
    return module  # type: ignore[return-value]


def build_model(
    backbone_name: str,
    cifar_stem: bool,
    channels: list[int] | None,
    head_depth: int,
    out_dim: int,
    dual_bn: bool,
) -> ContrastiveModel:
    backbone = create_backbone(backbone_name, cifar_stem, channels)
    head = projection_head(feature_dim(backbone), head_depth, out_dim)
    return ContrastiveModel(backbone, head, dual_bn)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode for the block; afterwards every submodule gets its own
    train / eval flag back (a mixed state included), so monitors can run mid-training."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
