"""The contrastive network: backbone + projection head, with a dense and a pruned branch, run
as two passes or fused into one (:meth:`ContrastiveModel.forward_pair`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sdclr.errors import ConfigError
from sdclr.models.backbone import (
    DENSE,
    PAIR,
    PRUNED,
    DualBatchNorm,
    convert_branch_convs,
    convert_dual_bn,
    create_backbone,
    feature_dim,
    pairable,
    projection_head,
    set_bn_branch,
    set_conv_branch,
    set_conv_masks,
)


class ContrastiveModel(nn.Module):
    """``forward(x, branch, masks)``: branch 0 is the dense network; branch 1 uses the second
    BN copy (dual BN) and, when ``masks`` is given, the conv weights multiplied by the mask.
    Every backbone conv is a :class:`sdclr.models.backbone.BranchConv2d`, which computes
    weight * mask in its own forward: gradients from the pruned branch reach the shared dense
    weights, the dense model itself is never zeroed, and a compiled backbone computes the
    product inside its graph from the parameters and the mask buffers."""

    compile_mode: str | None = None  # torch.compile's mode, once prepare_model compiled it

    def __init__(self, backbone: nn.Module, head: nn.Module, dual_bn: bool):
        super().__init__()
        self.backbone = convert_branch_convs(backbone)
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
            set_conv_masks(self.backbone, masks)
            set_conv_branch(self.backbone, PRUNED)
        try:
            return self.head(self.backbone(x))
        finally:  # evaluation and export always see the dense branch
            if masks:
                set_conv_branch(self.backbone, DENSE)
            if self.dual_bn:
                set_bn_branch(self, 0)

    def forward_pair(
        self,
        x_dense: torch.Tensor,
        x_pruned: torch.Tensor,
        masks: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both branches in one pass of the backbone (``fuse_branches=true``): the same
        outputs and gradients as ``forward(x_dense, 0)`` and ``forward(x_pruned, 1, masks)``,
        with one launch of each backbone kernel instead of two (the head still runs twice).

        The two inputs are stacked along the channels and every convolution runs with twice
        its groups over the weights ``[w | w * mask]`` (built in the conv's forward,
        :class:`sdclr.models.backbone.BranchConv2d` with branch PAIR), so each group sees only
        its own branch; each DualBatchNorm normalises its two halves with its two copies
        (:data:`sdclr.models.backbone.PAIR`); ReLU, pooling and the residual additions act per
        channel. The backbone may hold nothing that mixes channels other than a Conv2d
        (:func:`check_fusable`)."""
        if not self.dual_bn:
            raise RuntimeError("the fused pass needs dual BN")
        fmt = (
            torch.channels_last
            if x_dense.is_contiguous(memory_format=torch.channels_last)
            and not x_dense.is_contiguous()
            else torch.contiguous_format
        )
        x = torch.cat([x_dense, x_pruned], dim=1).contiguous(memory_format=fmt)
        set_conv_masks(self.backbone, masks)
        try:  # whatever happens, the model is left as it was found
            set_conv_branch(self.backbone, PAIR)
            set_bn_branch(self.backbone, PAIR)
            f_dense, f_pruned = self.backbone(x).chunk(2, dim=1)
            set_bn_branch(self.head, 0)
            z_dense = self.head(f_dense)
            set_bn_branch(self.head, 1)
            z_pruned = self.head(f_pruned)
        finally:
            set_conv_branch(self.backbone, DENSE)
            set_bn_branch(self, 0)
        return z_dense, z_pruned


# What the fused pass may meet in a backbone: layers that act on each channel alone (plus
# Conv2d and DualBatchNorm, which it rewrites) and the containers of timm's ResNets, whose
# forward only chains them and adds residuals.
_PER_CHANNEL = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Identity,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
)
_CONTAINERS = ("ResNet", "BasicBlock", "Bottleneck", "Sequential")


def check_fusable(model: ContrastiveModel) -> None:
    """Raise ConfigError unless :meth:`ContrastiveModel.forward_pair` computes exactly the
    two separate branches for this model."""
    if not model.dual_bn:
        raise ConfigError(
            "config key 'fuse_branches': the fused pass needs dual BN (bn=dual, or bn=auto "
            "with a prune ratio); set fuse_branches=false for shared BN"
        )
    for name, m in model.backbone.named_modules():
        if isinstance(m, DualBatchNorm) and not pairable(m):
            raise ConfigError(
                f"config key 'fuse_branches': the backbone's batch norm '{name}' lacks affine "
                f"parameters, running statistics or a momentum, which the fused pass needs; "
                f"set fuse_branches=false"
            )
    checked: list[str] = []  # modules checked whole, with everything inside them
    for name, m in model.backbone.named_modules():
        if any(name.startswith(f"{c}.") for c in checked):
            continue
        kind = type(m).__name__
        if isinstance(m, DualBatchNorm) or (
            # timm's global pooling: avg, max or their mean act per channel; 'catavgmax'
            # concatenates, which would interleave the branches' features
            kind == "SelectAdaptivePool2d" and "cat" not in str(getattr(m, "pool_type", "cat"))
        ):
            checked.append(name)
            continue
        if isinstance(m, (nn.Conv2d, *_PER_CHANNEL)) or kind in _CONTAINERS:
            continue
        raise ConfigError(
            f"config key 'fuse_branches': the backbone's '{name}' ({kind}) may mix channels, "
            f"which the fused pass cannot keep apart; set fuse_branches=false for this backbone"
        )


FUSED_ON_CPU = (
    "fuse_branches=true on a CPU: the fused pass is a CUDA speed option. Its grouped "
    "convolutions go through oneDNN, whose float32 backward is inexact on some CPUs (the "
    "conv weight gradients about 1e-2 relative off the two separate passes on an AVX-512 AMD "
    "EPYC, where the separate passes agree with float64 to about 1e-5; README, Step "
    "numerics), so the run may not follow SDCLR's gradients. Use fuse_branches=false on a "
    "CPU; `python -m sdclr.bench --quick` measures the error on this machine."
)


def warn_if_fused_on_cpu(model: nn.Module) -> None:
    """Warn (once per process: Python's default filter) when the fused pass would run in
    float32 or lower on a CPU; in float64 oneDNN is not used and the pass is exact."""
    p = next(model.parameters())
    if p.device.type == "cpu" and p.dtype != torch.float64:
        warnings.warn(FUSED_ON_CPU, stacklevel=3)


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
