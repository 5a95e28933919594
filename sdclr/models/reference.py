"""Checkpoints of the reference code (VITA-Group/SDCLR, ``train_simCLR.py``), read as ours.

The reference saves ``{"epoch", "state_dict", "optim"}`` from its DistributedDataParallel
model, so every key starts with ``module.``. Its ResNet normalises inside the model
(``normalize.mean`` / ``normalize.std`` buffers); with ``--prune_dual_bn`` every batch norm is
a ``batch_norm_multiple`` holding two copies, ``bn_list.0`` ("nonprune", the dense branch's)
and ``bn_list.1`` ("prune", the pruned branch's), and a downsample is
``downsample.conv`` / ``downsample.bn``; without it (SimCLR, ``models/resnet.py``) batch norms
are plain and downsamples torchvision's ``downsample.0`` / ``downsample.1``. The projection
head is ``fc``: ``fc1`` (with bias), ``bn1``, ``fc2``, ``bn2`` [, ``fc3``, ``bn3``], each
Linear followed by its batch norm, as ours (``head.0``, ``head.1``, ``head.3``, ``head.4``
[, ``head.6``, ``head.7``]). The pruning masks are plain attributes, never saved.

Evaluated as the reference's own linear evaluation does (``train_cifar.py --cvt_state_dict
--bnNameCnt 0``): the dense branch, with the dense copy of every batch norm (``bn_list.0``),
no mask. :func:`from_reference` maps the keys onto a single-BN model of ours and derives its
spec from the shapes; nothing is guessed that the shapes do not say.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch

#: which copy of a dual batch norm is evaluated: 0, "nonprune", the dense branch's
DENSE_BN_COPY = 0
DEFAULT_WIDTHS = [64, 128, 256, 512]
#: (block, blocks per stage) -> the timm model of the same shape
ARCHITECTURES = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("bottleneck", (3, 8, 36, 3)): "resnet152",
}
_BN_COPY = re.compile(r"\.bn_list\.(\d+)\.")
_HEAD = re.compile(r"^fc\.(fc|bn)(\d+)\.(.*)$")
_BACKBONE = re.compile(r"^(conv1|bn1|layer[1-4])\.")


def is_reference_checkpoint(payload: Any) -> bool:
    """True for what ``train_simCLR.py`` saves (or its bare state dict): a ResNet's
    ``conv1.weight`` under an optional ``module.`` and no sdclr ``spec``."""
    if not isinstance(payload, Mapping) or "spec" in payload:
        return False
    state = payload.get("state_dict", payload)
    return isinstance(state, Mapping) and any(
        isinstance(k, str) and _strip(k) == "conv1.weight" for k in state
    )


def from_reference(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An sdclr checkpoint payload (``model``, ``spec``, ``epoch``, ``finished``, ``source``)
    holding the reference checkpoint's dense branch. Raises ValueError naming what does not
    fit (an architecture without a timm twin, a key the map does not know)."""
    state = {_strip(k): v for k, v in payload.get("state_dict", payload).items()}
    mean, std = state.pop("normalize.mean", None), state.pop("normalize.std", None)
    dual = any(".bn_list." in k for k in state)
    model: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        if dual:
            copy = _BN_COPY.search(key)
            if copy is not None and int(copy.group(1)) != DENSE_BN_COPY:
                continue  # the pruned branch's statistics: not evaluated
            key = _BN_COPY.sub(".", key)
        if key.startswith("fc."):
            if "_prune" in key:  # proj_head_dual's second head, the pruned branch's
                continue
            head = _HEAD.match(key)
            if head is None:
                unknown.append(key)
                continue
            kind, index, rest = head.group(1), int(head.group(2)), head.group(3)
            model[f"head.{3 * (index - 1) + (kind == 'bn')}.{rest}"] = value
            continue
        if not _BACKBONE.match(key):
            unknown.append(key)
            continue
        key = key.replace("downsample.conv.", "downsample.0.").replace(
            "downsample.bn.", "downsample.1."
        )
        model[f"backbone.{key}"] = value
    if unknown:
        raise ValueError(f"keys the reference map does not know: {', '.join(unknown[:5])}")
    spec = _spec(model, mean, std)
    return {
        "model": model,
        "spec": spec,
        "epoch": payload.get("epoch"),
        "finished": True,
        "source": (
            f"reference checkpoint (VITA-Group/SDCLR layout, {'dual' if dual else 'single'} "
            f"BN): the dense branch"
            + (
                f", batch norm copy {DENSE_BN_COPY} ('nonprune', the dense branch's)"
                if dual
                else ""
            )
            + ", no mask, as the reference's own evaluation (--bnNameCnt 0)"
        ),
    }


def _strip(key: str) -> str:
    return key[len("module.") :] if key.startswith("module.") else key


def _spec(
    model: Mapping[str, torch.Tensor], mean: torch.Tensor | None, std: torch.Tensor | None
) -> dict[str, Any]:
    """Our model spec from the mapped weights' shapes."""
    block = "bottleneck" if "backbone.layer1.0.conv3.weight" in model else "basic"
    blocks = tuple(
        len({k.split(".")[2] for k in model if k.startswith(f"backbone.layer{i}.")})
        for i in range(1, 5)
    )
    name = ARCHITECTURES.get((block, blocks))
    if name is None:
        raise ValueError(
            f"a ResNet of {block} blocks {list(blocks)} per stage has no timm twin here "
            f"(known: {', '.join(sorted(set(ARCHITECTURES.values())))})"
        )
    widths = [int(model[f"backbone.layer{i}.0.conv1.weight"].shape[0]) for i in range(1, 5)]
    cifar_stem = int(model["backbone.conv1.weight"].shape[-1]) == 3
    head_linears = sorted(
        int(k.split(".")[1]) for k in model if re.fullmatch(r"head\.\d+\.weight", k)
    )
    linears = [i for i in head_linears if i % 3 == 0]
    if not linears:
        raise ValueError("no projection head (fc.fc1 ...) in the checkpoint")
    return {
        "backbone": name,
        "cifar_stem": cifar_stem,
        "channels": None if widths == DEFAULT_WIDTHS else widths,
        "head_depth": len(linears),
        "out_dim": int(model[f"head.{linears[-1]}.weight"].shape[0]),
        "dual_bn": False,
        "image_size": 32 if cifar_stem else 224,
        # float32 buffers: 0.485 is stored as 0.48499998...
        "mean": [round(float(v), 6) for v in mean] if mean is not None else None,
        "std": [round(float(v), 6) for v in std] if std is not None else None,
    }
