"""SimCLR and SDCLR as one thin piece over the shared model, loss and pruning.

SimCLR (no pruned branch, shared BN): both views in one forward pass, as the reference does.
SDCLR: view 1 through the dense branch, view 2 through the pruned branch (weight * mask,
BN copy 1 when dual); one contrastive loss over both and a single backward, which is the same
gradient as the reference's separate dense and pruned passes (tests/methods/test_simclr.py). With
``fuse_branches`` the two branches run as one pass of grouped convolutions
(:meth:`sdclr.models.contrastive.ContrastiveModel.forward_pair`; same outputs and
gradients). The loss is NT-Xent, or its debiased / hard-negative variants
(:func:`sdclr.losses.contrastive.contrastive_loss`).

The method interface is :class:`sdclr.methods.base.Method`; the factory of the config's
method (simclr, moco, byol) is :func:`sdclr.methods.registry.build_method`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdclr.config.derived import bn_mode
from sdclr.losses.contrastive import contrastive_loss
from sdclr.methods.base import Objective, PrunedBranch
from sdclr.models.contrastive import ContrastiveModel, check_fusable, warn_if_fused_on_cpu
from sdclr.models.pruning import SelfCompetitor, as_competitor, build_competitor


class SimCLR(PrunedBranch):
    """SimCLR, or SDCLR with a pruned branch. ``prune_ratio``: the self-competitor as
    :func:`sdclr.models.pruning.build_competitor` makes it from the config, or a bare ratio
    (:func:`sdclr.models.pruning.as_competitor`; ``random_ratio`` only goes with that), or
    None (SimCLR)."""

    momentum = None  # no momentum network

    def __init__(
        self,
        temperature: float,
        prune_ratio: SelfCompetitor | float | None = None,
        random_ratio: float = 0.0,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
        loss: str = "ntxent",
        tau_plus: float = 0.1,
        beta: float = 1.0,
        fuse_branches: bool = False,
    ):
        self.temperature = temperature
        self.competitor = as_competitor(prune_ratio, generator, random_ratio)
        self.dual_bn = dual_bn
        self.loss_kind = loss
        self.tau_plus = tau_plus
        self.beta = beta
        self.fuse_branches = fuse_branches  # both branches in one grouped-conv pass
        self.track_samples = False
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def fuses(self) -> bool:
        """Whether the branches run as one fused pass: ``fuse_branches`` with two branches to
        fuse (SimCLR with shared BN is one pass of both views already)."""
        return self.fuse_branches and (self.pruned or self.dual_bn)

    def loss(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> torch.Tensor:
        if not self.pruned and not self.dual_bn:
            z1, z2 = model(torch.cat([view1, view2])).chunk(2)
        else:
            if self.pruned and self.masks is None:
                raise RuntimeError("on_epoch_start must run before the first SDCLR step")
            if self.fuses:
                z1, z2 = model.forward_pair(view1, view2, self.masks)
            else:
                z1 = model(view1, branch=0)
                z2 = model(view2, branch=1 if self.dual_bn else 0, masks=self.masks)
        if self.track_samples:
            self._last = (z1.detach(), z2.detach(), self.temperature)
        return contrastive_loss(z1, z2, self.temperature, self.loss_kind, self.tau_plus, self.beta)

    @torch.no_grad()
    def sample_losses(self) -> torch.Tensor:
        """[B] per-sample losses of the last ``loss`` call: the mean of the sample's two
        anchors (view 1 and view 2); their mean is the loss itself."""
        if self._last is None:
            raise RuntimeError("set track_samples = True before the loss to get sample losses")
        z1, z2, t = self._last
        per = contrastive_loss(
            z1, z2, t, self.loss_kind, self.tau_plus, self.beta, reduction="none"
        )
        b = z1.shape[0]
        return (per[:b] + per[b:]).float() / 2

    def setup(self, model: ContrastiveModel) -> None:
        if self.fuses:
            check_fusable(model)
            warn_if_fused_on_cpu(model)

    # the rest of the method interface: nothing outside the model, no state of its own

    def extra_parameters(self) -> list[nn.Parameter]:
        return []

    def after_step(self, model: ContrastiveModel) -> None:
        pass

    def set_progress(self, fraction: float) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    @classmethod
    def from_config(cls, cfg, generator: torch.Generator | None = None) -> SimCLR:
        """``method=simclr``: SimCLR, or SDCLR with a prune ratio; the BN mode, the loss and
        the fused pass. ``generator`` drives random pruning (the loop's, so checkpoints
        capture it)."""
        objective = Objective.from_config(cfg)
        return cls(
            float(cfg.pretrain.temperature),
            build_competitor(cfg, generator),
            dual_bn=bn_mode(cfg) == "dual",
            generator=generator,
            loss=objective.kind,
            tau_plus=objective.tau_plus,
            beta=objective.beta,
            fuse_branches=bool(cfg.fuse_branches),
        )


# The class's name before it was called what it is (kept for code that imports the old name).
ContrastiveMethod = SimCLR
