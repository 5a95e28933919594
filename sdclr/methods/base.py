"""What a method object is: the interface the pretraining loop, the monitors, checkpoints and
BCL rely on (:class:`Method`), and the share of it that comes with the SDCLR self-competitor
(:class:`PrunedBranch`).

A method turns two views of a batch into a loss through the shared
:class:`sdclr.models.contrastive.ContrastiveModel`. SimCLR / SDCLR
(:mod:`sdclr.methods.simclr`) has no state of its own; MoCo and BYOL
(:mod:`sdclr.methods.momentum`) add a momentum network and more. The loop learns what a method
does from attributes, not from ``hasattr``: ``temperature`` (None: the method has none; else
the loop sets it at every epoch start), ``momentum`` (None: no momentum network; else logged
per epoch) and ``fuses`` (whether the two branches run as one fused pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from sdclr.models.contrastive import ContrastiveModel
from sdclr.models.pruning import SelfCompetitor


class Method(Protocol):
    temperature: float | None
    momentum: float | None
    fuses: bool
    dual_bn: bool  # the second branch uses BN copy 1
    # with it set before ``loss``, ``sample_losses`` gives that step's detached per-sample
    # losses (BCL's memory and the diagnostics)
    track_samples: bool

    @property
    def pruned(self) -> bool: ...

    @property
    def masks(self) -> dict[str, torch.Tensor] | None: ...

    @masks.setter
    def masks(self, value: dict[str, torch.Tensor] | None) -> None: ...

    def on_epoch_start(self, model: ContrastiveModel) -> float | None:
        """Recompute the pruned branch's mask; returns its density (None: no pruned branch)."""

    def setup(self, model: ContrastiveModel) -> None:
        """Create what the method needs beside ``model`` (before the optimiser is built)."""

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters outside ``model`` that the optimiser also trains."""

    def loss(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> torch.Tensor:
        """The scalar loss of a step; one backward reaches every trained parameter."""

    def after_step(self, model: ContrastiveModel) -> None:
        """After every optimiser step (the momentum update)."""

    def set_progress(self, fraction: float) -> None:
        """The fraction of training done, before every loss (momentum schedules)."""

    def sample_losses(self) -> torch.Tensor:
        """[B] float32 per-sample losses of the last ``loss`` call (``track_samples`` set)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class Objective:
    """The loss of a method with negatives (SimCLR / SDCLR, MoCo): ``kind`` ntxent,
    debiased or hard (:data:`sdclr.losses.contrastive.KINDS`), the class prior ``tau_plus``
    (debiased, hard) and the hardness ``beta`` (hard)."""

    kind: str = "ntxent"
    tau_plus: float = 0.1
    beta: float = 1.0

    @classmethod
    def from_config(cls, cfg) -> Objective:
        """The ``loss`` keys."""
        return cls(str(cfg.loss.name), float(cfg.loss.tau_plus), float(cfg.loss.beta))


class PrunedBranch:
    """``pruned``, ``masks`` and ``on_epoch_start`` for a method holding its self-competitor
    in ``self.competitor`` (None: no pruned branch)."""

    competitor: SelfCompetitor | None

    @property
    def pruned(self) -> bool:
        return self.competitor is not None

    @property
    def masks(self) -> dict[str, torch.Tensor] | None:
        return self.competitor.masks if self.competitor is not None else None

    @masks.setter
    def masks(self, value: dict[str, torch.Tensor] | None) -> None:
        if self.competitor is not None:
            self.competitor.masks = value
        elif value:
            raise ValueError("a method without a pruned branch has no mask to set")

    def on_epoch_start(self, model: ContrastiveModel) -> float | None:
        """Recompute the mask from the current dense weights; returns its density."""
        return self.competitor.update(model.backbone) if self.competitor is not None else None
