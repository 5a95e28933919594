"""BYOL (Grill et al. 2020) as a method object (the interface of
:class:`sdclr.methods.base.Method`, on the momentum machinery of :mod:`sdclr.methods.momentum`).

Online network: the ContrastiveModel (backbone + projection head) followed by a predictor
MLP, Linear(out, hidden) -> BN -> ReLU -> Linear(hidden, out). Target network: an EMA copy of
backbone + head (no predictor), ``tau`` (default 0.99), optionally raised to 1 along a half
cosine over training with ``cosine_tau`` and ``set_progress(fraction)`` (the paper's
schedule). Loss: ``mean_i(2 - 2 cos(p1_i, t2_i)) + mean_i(2 - 2 cos(p2_i, t1_i))`` with
``p = predictor(online(v))`` and ``t = target(v)`` (the sum of both directions, as in the
paper; between 0 and 8).

The predictor is not part of ``model``: call ``setup(model)`` before building the optimiser
and add ``extra_parameters()`` (the predictor's parameters) to it. Under
DistributedDataParallel the predictor's gradients are not averaged unless the loop puts it
inside the DDP module (its initial weights are broadcast from rank 0 at setup); the runner
therefore refuses BYOL under torchrun.

Pruning (prune ratio given): the same design as MoCo, for the same reasons: online view 1
through the dense branch, online view 2 through the pruned branch (mask, BN copy 1 with dual
BN, and the predictor's BN copy 1 as well, the predictor being part of the online network);
the target network always runs dense. No Shuffle BN is needed (BYOL never used it).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdclr.config.derived import bn_mode
from sdclr.losses.byol import byol_loss
from sdclr.methods.momentum import MomentumMethod, broadcast_, head_out_dim
from sdclr.models.backbone import convert_dual_bn, set_bn_branch
from sdclr.models.contrastive import ContrastiveModel
from sdclr.models.pruning import SelfCompetitor, build_competitor


def predictor_mlp(dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(dim, hidden),
        nn.BatchNorm1d(hidden),
        nn.ReLU(inplace=True),
        nn.Linear(hidden, dim),
    )


class BYOL(MomentumMethod):
    temperature = None  # no negatives, no temperature

    def __init__(
        self,
        hidden_dim: int = 512,
        tau: float = 0.99,
        cosine_tau: bool = False,
        prune_ratio: SelfCompetitor | float | None = None,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__(tau, cosine_tau, prune_ratio, dual_bn, generator)
        self.hidden_dim = int(hidden_dim)
        self.predictor: nn.Module | None = None

    @property
    def tau(self) -> float:
        return self.momentum

    @property
    def target(self) -> ContrastiveModel | None:
        return self.momentum_model

    def _setup_extra(self, model: ContrastiveModel) -> None:
        ref = next(model.parameters())
        predictor = predictor_mlp(head_out_dim(model), self.hidden_dim)
        if self.dual_bn:
            convert_dual_bn(predictor)
        self.predictor = predictor.to(ref)  # the model's device and dtype
        broadcast_(list(self.predictor.parameters()) + list(self.predictor.buffers()))

    def extra_parameters(self) -> list[nn.Parameter]:
        if self.predictor is None:
            raise RuntimeError(
                "BYOL's predictor is created by setup(model): call it before building the "
                "optimiser, then pass extra_parameters() to the optimiser too"
            )
        return list(self.predictor.parameters())

    def _extra_state(self) -> dict[str, Any]:
        return {"predictor": self.predictor.state_dict()}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.predictor.load_state_dict(state["predictor"])  # in place: optimiser refs stay

    def predict(self, z: torch.Tensor, branch: int = 0) -> torch.Tensor:
        if self.dual_bn:
            set_bn_branch(self.predictor, branch)
        out = self.predictor(z)
        if self.dual_bn:
            set_bn_branch(self.predictor, 0)
        return out

    def loss(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> torch.Tensor:
        self._check_ready(model)
        self.predictor.train(model.training)
        t1, t2 = self._momentum_forward(model, torch.cat([view1, view2])).chunk(2)
        z1, z2, joint = self._online(model, view1, view2)
        if joint:
            p1, p2 = self.predict(torch.cat([z1, z2])).chunk(2)
        else:
            p1, p2 = self.predict(z1, 0), self.predict(z2, self._branch2)
        if self.track_samples:
            self._last_terms = [(p1.detach(), t2), (p2.detach(), t1)]
        return byol_loss(p1, t2) + byol_loss(p2, t1)

    def _per_sample(self, term: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        p, z = term
        return byol_loss(p, z, reduction="none")

    @classmethod
    def from_config(cls, cfg, generator: torch.Generator | None = None) -> BYOL:
        """``method=byol``: the predictor width, the target momentum and its schedule, the
        prune ratio and BN mode."""
        m = cfg.method
        return cls(
            hidden_dim=int(m.predictor_hidden),
            tau=float(m.momentum),
            cosine_tau=bool(m.cosine_momentum),
            prune_ratio=build_competitor(cfg, generator),
            dual_bn=bn_mode(cfg) == "dual",
            generator=generator,
        )
