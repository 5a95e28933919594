"""Encoders: timm ResNets with an optional CIFAR stem, projection heads, dual BN and branch
convolutions.

Dual BN keeps two independent copies (affine parameters and running statistics) of every
batch-norm layer: copy 0 serves the dense branch, copy 1 the pruned branch of SDCLR. All
other weights are shared. Every convolution is a :class:`BranchConv2d`, which multiplies its
weight by the self-competitor's mask on the pruned branch inside its own forward (so inside
the compiled graph).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sdclr.errors import ConfigError


def create_backbone(name: str, cifar_stem: bool, channels: list[int] | None = None) -> nn.Module:
    """A timm ResNet returning pooled features (``num_classes=0``), initialised as the
    reference code does: Kaiming-normal (fan_out, relu) convs, BN weight 1 / bias 0, no
    zero-initialised residual BN."""
    # imported here, not at the top: timm brings torchvision's ops and torch._dynamo (about 4 s
    # on a 2-core machine), which a run that stops on a bad config value never needs
    import timm

    kwargs = {"num_classes": 0, "pretrained": False, "zero_init_last": False}
    if channels is not None:
        kwargs["channels"] = tuple(int(c) for c in channels)
    try:
        model = timm.create_model(name, **kwargs)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ConfigError(
            f"config key 'backbone.name': timm cannot build '{name}' ({e}); use "
            f"a timm ResNet such as resnet18 or resnet50"
        ) from e
    if not hasattr(model, "conv1") or not hasattr(model, "fc"):
        raise ConfigError(
            f"config key 'backbone.name': '{name}' is not a timm ResNet (no "
            f"conv1/fc); use e.g. resnet18, resnet34, resnet50"
        )
    if cifar_stem:
        apply_cifar_stem(model)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def apply_cifar_stem(model: nn.Module) -> nn.Module:
    """3x3 stride-1 stem conv and no max-pool, for 32 px images (timm has no such option)."""
    if not isinstance(model.conv1, nn.Conv2d):
        raise ConfigError(
            "backbone.cifar_stem=true needs a ResNet with a single-conv stem "
            "(not the deep 'd'/'t' stems)"
        )
    width = model.conv1.out_channels
    model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def feature_dim(backbone: nn.Module) -> int:
    return int(backbone.num_features)


def projection_head(in_dim: int, depth: int, out_dim: int = 128) -> nn.Sequential:
    """SimCLR (depth 2): Linear-BN-ReLU-Linear(no bias)-BN. SDCLR as published (depth 3):
    one more Linear(no bias)-BN-ReLU block before the output layer."""
    layers: list[nn.Module] = []
    for i in range(depth - 1):
        layers += [
            nn.Linear(in_dim, in_dim, bias=(i == 0)),
            nn.BatchNorm1d(in_dim),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim)]
    return nn.Sequential(*layers)


PAIR = -1  # DualBatchNorm / BranchConv2d .branch for the fused pass: both, side by side
DENSE, PRUNED = 0, 1  # BranchConv2d.branch: the dense weight, or the weight times its mask


class BranchConv2d(nn.Conv2d):
    """A Conv2d (same parameters, same state-dict keys) that serves SDCLR's branches.

    ``branch`` DENSE uses the weight; PRUNED the weight times ``mask`` (a non-persistent
    buffer in the weight's dtype, bound by :func:`set_conv_masks` to the self-competitor's
    mask tensor, which is refreshed in place); PAIR (the fused pass) the weights
    ``[w | w * mask]`` over twice the groups, so the dense and pruned inputs stacked along the
    channels each meet their own weights. The product is computed in this forward, inside a
    compiled backbone's graph, from the parameters and the mask buffer, whose storage stays put
    from step to step: nothing fresh enters the compiled graph at every call (CUDA graphs then
    need no re-recording).

    ``unit_stride``: a 1x1, unpadded, strided conv computed as a stride-1 conv of every s-th
    pixel: the same values through other kernels. The CPU runs ask for it (see
    :func:`sdclr.train.step.prepare_model`): oneDNN's float32 / bf16 weight-gradient kernel of
    a strided 1x1 conv with fewer than 16 channels, channels_last, an odd batch and more than
    one thread writes out of bounds on AVX-512 CPUs (torch 2.13-2.14, oneDNN 3.12;
    scripts/onednn_strided_pointwise_crash.py reproduces it)."""

    branch: int = DENSE
    unit_stride: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b, groups = self.weight, self.bias, self.groups
        mask = self.mask
        if self.branch == PRUNED and mask is not None:
            w = w * mask
        elif self.branch == PAIR:
            w = torch.cat([w, w * mask if mask is not None else w])
            b = torch.cat([b, b]) if b is not None else None
            groups *= 2
        stride, padding = self.stride, self.padding
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        if self.unit_stride:
            x = x[:, :, :: stride[0], :: stride[1]]
            stride = 1
        return F.conv2d(x, w, b, stride, padding, self.dilation, groups)


def convert_branch_convs(module: nn.Module) -> nn.Module:
    """Every Conv2d of ``module`` becomes a :class:`BranchConv2d` in place (the same object,
    parameters and names; a mask buffer, empty, that no state dict holds)."""
    for m in module.modules():
        if type(m) is nn.Conv2d:
            m.__class__ = BranchConv2d
            m.register_buffer("mask", None, persistent=False)
    return module


def branch_convs(module: nn.Module) -> list[tuple[str, BranchConv2d]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, BranchConv2d)]


def set_conv_branch(module: nn.Module, branch: int) -> None:
    for _, m in branch_convs(module):
        m.branch = branch


def set_conv_masks(module: nn.Module, masks: dict[str, torch.Tensor] | None) -> None:
    """Bind each conv's mask buffer to ``masks[f"{conv name}.weight"]`` (no copy; the same
    tensor as before is left alone, so its address, which a compiled graph may rely on, stays
    the same), or unbind them all (None)."""
    for name, m in branch_convs(module):
        new = masks.get(f"{name}.weight") if masks else None
        if m.mask is not new:
            m.mask = new


def use_unit_stride_pointwise(module: nn.Module) -> int:
    """Switch every strided 1x1 unpadded :class:`BranchConv2d` to ``unit_stride``; returns how
    many (the workaround of the oneDNN crash, see the class)."""
    n = 0
    for _, m in branch_convs(module):
        if m.kernel_size == (1, 1) and m.padding == (0, 0) and m.stride != (1, 1):
            m.unit_stride = True
            n += 1
    return n


class DualBatchNorm(nn.Module):
    """Two batch norms behind one layer; ``branch`` picks which one a forward uses.

    ``branch = PAIR`` (the fused SDCLR pass,
    :meth:`sdclr.models.contrastive.ContrastiveModel.forward_pair`): the input holds the dense
    branch's channels followed by the pruned branch's, and each half is normalised by its own
    copy. Batch norm is per channel, so this is exactly the two
    separate calls: same batch statistics, same running-statistics updates."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.bn = nn.ModuleList([bn, copy.deepcopy(bn)])
        self.branch = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch == PAIR:
            return self._pair_forward(x)
        return self.bn[self.branch](x)

    def _pair_forward(self, x: torch.Tensor) -> torch.Tensor:
        dense, pruned = self.bn
        if not pairable(self):
            raise RuntimeError(
                "the fused pass needs affine batch norms with running statistics and a momentum"
            )
        # F.batch_norm updates the running statistics it is given in place: give it the two
        # copies concatenated, then write each half back
        mean = torch.cat([dense.running_mean, pruned.running_mean])
        var = torch.cat([dense.running_var, pruned.running_var])
        out = nn.functional.batch_norm(
            x,
            mean,
            var,
            torch.cat([dense.weight, pruned.weight]),
            torch.cat([dense.bias, pruned.bias]),
            dense.training,
            dense.momentum,
            dense.eps,
        )
        if dense.training:
            c = dense.num_features
            with torch.no_grad():
                for i, bn in enumerate(self.bn):
                    bn.running_mean.copy_(mean[i * c : (i + 1) * c])
                    bn.running_var.copy_(var[i * c : (i + 1) * c])
                    bn.num_batches_tracked.add_(1)
        return out


def pairable(bn: DualBatchNorm) -> bool:
    """Whether the fused pass can run ``bn``'s two copies side by side: both affine, both
    with running statistics and the same momentum and eps."""
    a, b = bn.bn
    return all(m.affine and m.track_running_stats for m in (a, b)) and (
        a.momentum is not None and (a.momentum, a.eps) == (b.momentum, b.eps)
    )


def convert_dual_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm (1d/2d) in ``module`` by a :class:`DualBatchNorm`."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        else:
            convert_dual_bn(child)
    return module


def set_bn_branch(module: nn.Module, branch: int) -> None:
    for m in module.modules():
        if isinstance(m, DualBatchNorm):
            m.branch = branch


def dense_state_dict(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's weights with dual BN collapsed to the dense copy: plain timm keys."""
    out = {}
    for key, value in backbone.state_dict().items():
        if ".bn.1." in key:
            continue
        out[key.replace(".bn.0.", ".")] = value.detach().clone()
    return out
