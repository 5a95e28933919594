"""The methods by name, as ``method.name`` chooses them: a leaf that only the command line and
the benchmark import. The names (and titles) are those of
:data:`sdclr.config.schema.METHOD_NAMES`; adding a method is its name there and one line
here (and its ``from_config``)."""

from __future__ import annotations

import torch

from sdclr.config.schema import METHOD_NAMES
from sdclr.methods.base import Method
from sdclr.methods.byol import BYOL
from sdclr.methods.moco import MoCo
from sdclr.methods.simclr import SimCLR

METHODS = {"simclr": SimCLR, "moco": MoCo, "byol": BYOL}
if list(METHODS) != list(METHOD_NAMES):  # the config would accept a name built nowhere
    raise ImportError(
        f"sdclr.methods.registry.METHODS {list(METHODS)} and "
        f"sdclr.config.schema.METHOD_NAMES {list(METHOD_NAMES)} name other methods"
    )


def build_method(cfg, generator: torch.Generator | None = None) -> Method:
    """The method object of a config: ``method.name`` with the prune ratio, BN mode, loss and
    the method's own keys. ``generator`` drives random pruning, MoCo's initial queue and
    MoCHi's draws (the loop's generator, so checkpoints capture it)."""
    name = cfg.method.name
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}")
    return METHODS[name].from_config(cfg, generator)
