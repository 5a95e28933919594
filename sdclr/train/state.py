"""What a pretraining run carries from step to step and a checkpoint must keep.

:class:`TrainState` holds the plain records (epoch, step, the curves, the mid-epoch
position as an :class:`EpochPosition`); :meth:`TrainState.to_payload` adds the live objects'
states (weights, optimiser, the method's networks and mask, the BCL loss memory, every RNG)
and gives the checkpoint dict, and :meth:`TrainState.from_payload` puts a checkpoint back
into the live objects and returns the records. A new piece of resumable state is one field
here (or, for state of the epoch in progress, one field of :class:`EpochPosition`).

The payload keys are those every checkpoint of this suite has had (old ones resume): model,
optimizer, method_state, epoch, step, position, masks, mask_density, epoch_losses,
temperatures, boost, knn, diagnostics, rng, finished, seconds, plus the run's
``Checkpointing.extra`` (spec, config, config_hash, wandb_id).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from sdclr.methods.base import Method
from sdclr.models.contrastive import ContrastiveModel
from sdclr.train.bcl import LossMemory
from sdclr.utils.rng import restore_rng, rng_state


@dataclass
class EpochPosition:
    """Where an interrupted epoch stopped: the next ``batch`` to run, the epoch's ``perm``
    (its order of the dataset), the ``loss_sum`` of its batches so far, and where those run,
    the epoch's BCL ``strength`` and the diagnostics' per-class loss sums (``class_loss``).
    Tensors on the CPU. In a checkpoint it is the ``position`` dict, with the optional keys
    only where they run (as every checkpoint has had it)."""

    batch: int
    perm: torch.Tensor
    loss_sum: float
    strength: torch.Tensor | None = None
    class_loss: dict[str, torch.Tensor] | None = None

    def to_payload(self) -> dict[str, Any]:
        payload = {"batch": self.batch, "perm": self.perm, "loss_sum": self.loss_sum}
        if self.strength is not None:
            payload["strength"] = self.strength
        if self.class_loss is not None:
            payload["class_loss"] = self.class_loss
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> EpochPosition:
        return cls(
            int(payload["batch"]),
            payload["perm"],
            float(payload["loss_sum"]),
            payload.get("strength"),
            payload.get("class_loss"),
        )


@dataclass
class TrainState:
    """The records of a run, each field saved under its own name.

    ``epoch`` counts finished epochs, except mid-epoch (``position`` set), where it is the
    0-based epoch in progress. ``seconds`` is the training time of the processes before this
    one."""

    epoch: int = 0
    step: int = 0
    position: EpochPosition | None = None
    mask_density: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    knn: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_payload(
        self,
        *,
        model: ContrastiveModel,
        optimizer: torch.optim.Optimizer,
        method: Method,
        memory: LossMemory | None,
        generator: torch.Generator,
        finished: bool,
        seconds: float,
    ) -> dict[str, Any]:
        """The checkpoint dict; ``seconds``: the run's training time so far, in all."""
        payload = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.position is not None:
            payload["position"] = self.position.to_payload()
        payload.update(
            model=model.state_dict(),
            optimizer=optimizer.state_dict(),
            method_state=method.state_dict(),
            masks={k: v.cpu() for k, v in (method.masks or {}).items()},
            boost={"memory": memory.state_dict()} if memory is not None else None,
            rng=rng_state(generator),
            finished=finished,
            seconds=seconds,
        )
        return payload

    @classmethod
    def from_payload(
        cls,
        payload: dict[str, Any],
        *,
        optimizer: torch.optim.Optimizer,
        method: Method,
        memory: LossMemory | None,
        generator: torch.Generator,
        device: torch.device,
    ) -> TrainState:
        """Restore ``payload`` into the optimiser, the method (its state, and its mask when
        the run stopped mid-epoch), the loss memory and the RNGs; returns the records. The
        model's weights are loaded before (they must be in place before the method's
        networks are built from them). Records an old checkpoint lacks start empty."""
        optimizer.load_state_dict(payload["optimizer"])
        if payload.get("method_state"):
            method.load_state_dict(payload["method_state"])
        if memory is not None and payload.get("boost"):
            memory.load_state_dict(payload["boost"]["memory"])
        restore_rng(payload["rng"], generator)
        defaults = cls()
        state = cls(
            **{
                f.name: copy.copy(payload.get(f.name, getattr(defaults, f.name)))
                for f in fields(cls)
            }
        )
        state.epoch, state.step, state.seconds = (
            int(state.epoch),
            int(state.step),
            float(state.seconds),
        )
        if state.position is not None:  # interrupted inside an epoch: its mask is restored
            state.position = EpochPosition.from_payload(state.position)
            method.masks = {k: v.to(device) for k, v in payload["masks"].items()}
        return state
