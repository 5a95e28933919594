"""SimCLR and SDCLR as one thin piece over the shared model, loss and pruning.

SimCLR (no pruned branch, shared BN): both views in one forward pass, as the reference does.
SDCLR: view 1 through the dense branch, view 2 through the pruned branch (weight * mask,
BN copy 1 when dual); one NT-Xent loss over both and a single backward, which is the same
gradient as the reference's separate dense and pruned passes (tests/test_method.py).
"""

from __future__ import annotations

import torch

from sdclr.loss import nt_xent
from sdclr.model import ContrastiveModel
from sdclr.pruning import conv_weights, magnitude_masks, mask_density


class ContrastiveMethod:
    def __init__(
        self,
        temperature: float,
        prune_ratio: float | None = None,
        random_ratio: float = 0.0,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
    ):
        self.temperature = temperature
        self.prune_ratio = prune_ratio
        self.random_ratio = random_ratio
        self.dual_bn = dual_bn
        self.generator = generator  # drives random pruning only
        self.masks: dict[str, torch.Tensor] | None = None

    @property
    def pruned(self) -> bool:
        return self.prune_ratio is not None

    @torch.no_grad()
    def on_epoch_start(self, model: ContrastiveModel) -> float | None:
        """Recompute the mask from the current dense weights; returns its density."""
        if not self.pruned:
            return None
        named = conv_weights(model.backbone)
        masks = magnitude_masks(
            [w for _, w in named], self.prune_ratio, self.random_ratio, self.generator
        )
        # multiplied into the weights, so keep them in the weights' dtype
        self.masks = {name: m.to(w.dtype) for (name, w), m in zip(named, masks)}
        return mask_density(masks)

    def loss(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> torch.Tensor:
        if not self.pruned and not self.dual_bn:
            z1, z2 = model(torch.cat([view1, view2])).chunk(2)
        else:
            if self.pruned and self.masks is None:
                raise RuntimeError("on_epoch_start must run before the first SDCLR step")
            z1 = model(view1, branch=0)
            z2 = model(view2, branch=1 if self.dual_bn else 0, masks=self.masks)
        return nt_xent(z1, z2, self.temperature)
