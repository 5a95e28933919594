"""The momentum machinery that MoCo (:mod:`sdclr.methods.moco`) and BYOL
(:mod:`sdclr.methods.byol`) share.

Interface (that of :class:`sdclr.methods.simclr.SimCLR`, plus the calls after
``loss``):

- ``pruned`` (bool), ``masks`` (``{conv weight name: mask}`` or None) and
  ``on_epoch_start(model) -> density | None``: the SDCLR self-competitor's global magnitude
  mask, recomputed from the dense online weights at every epoch start. It is the
  :class:`sdclr.models.pruning.SelfCompetitor` that SDCLR holds, so the mask is exactly
  SDCLR's.
- ``loss(model, view1, view2) -> Tensor``: a scalar; one backward reaches the online network
  (and BYOL's predictor) only. MoCo also enqueues this step's keys here.
- ``after_step(model)``: the momentum (EMA) update of the key / target network,
  ``key = m * key + (1 - m) * online`` over all parameters. The loop must call it after
  ``opt.step()``, every step.
- ``extra_parameters() -> list[nn.Parameter]``: parameters outside ``model`` that the
  optimiser must also train (BYOL's predictor; MoCo: ``[]``).
- ``set_progress(fraction)``: the fraction of training done, in [0, 1]; with
  ``cosine_momentum`` the momentum rises from its base value to 1 along a half cosine
  (BYOL's schedule), otherwise it does nothing.
- ``state_dict()`` / ``load_state_dict(state)``: key / target network, current momentum,
  MoCo's queue and pointer, BYOL's predictor. Loading before setup is allowed: the state is
  applied when the momentum copy is created.
- ``track_samples`` (bool) and ``sample_losses() -> Tensor [B]``: with ``track_samples`` set
  before ``loss``, the detached per-sample losses of that step (each sample's mean over its
  queries / predictions), computed from the step's detached logits or outputs (no random
  draw is repeated); BCL and the diagnostics of :mod:`sdclr.train.loop` use them.
- ``setup(model)``: creates the momentum copy (a deepcopy of the online ContrastiveModel,
  backbone + head, with ``requires_grad=False``; with dual BN only its copy 0 is used, but
  every parameter is averaged; it keeps its own BN statistics, updated by its own train-mode
  forwards) and the method's extra state. ``loss`` calls it lazily on first use; call it
  explicitly before building the optimiser when ``extra_parameters`` is not empty.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sdclr.errors import ConfigError
from sdclr.methods.base import PrunedBranch
from sdclr.models.contrastive import ContrastiveModel
from sdclr.models.pruning import SelfCompetitor, as_competitor
from sdclr.utils.distributed import is_distributed, world_size
from sdclr.utils.precision import upcast_half


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen deepcopy of ``model``; submodules compiled in the online model (``.compile()``,
    as the loop's ``prepare_model`` does) are compiled in the copy too (deepcopy drops it), in
    the online model's mode (``compile_mode``, which ``prepare_model`` records)."""
    copied = copy.deepcopy(model)
    mode = getattr(model, "compile_mode", None) or "default"
    for (_, src), (_, dst) in zip(model.named_modules(), copied.named_modules()):
        if getattr(src, "_compiled_call_impl", None) is not None:
            dst.compile(mode=mode)
    for p in copied.parameters():
        p.requires_grad_(False)
    return copied


def head_out_dim(model: ContrastiveModel) -> int:
    """The projection dimension: ``out_features`` of the head's last linear layer."""
    for m in reversed(list(model.head.modules())):
        if isinstance(m, nn.Linear):
            return m.out_features
    raise ValueError("the projection head has no nn.Linear layer")


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Rank 0's values everywhere (no-op in one process)."""
    if is_distributed() and world_size() > 1:
        for t in tensors:
            dist.broadcast(t, 0)


class MomentumMethod(PrunedBranch):
    """What MoCo and BYOL share: the SDCLR self-competitor (its mask over the online
    network), the online forward with the dense / pruned branches, the momentum copy, its
    EMA update and momentum schedule. ``prune_ratio``: the self-competitor, as
    :class:`sdclr.methods.simclr.SimCLR` takes it (built from the config, a bare
    ratio, or None)."""

    fuses = False  # the branches run on different networks

    def __init__(
        self,
        momentum: float,
        cosine_momentum: bool = False,
        prune_ratio: SelfCompetitor | float | None = None,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"the momentum must lie in [0, 1], got {momentum}")
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)
        self.cosine_momentum = cosine_momentum
        self.dual_bn = dual_bn
        self.generator = generator  # random pruning (and MoCo's queue init / MoCHi draws)
        # the mask is exactly SDCLR's: the same self-competitor, over the online backbone
        self.competitor = as_competitor(prune_ratio, generator)
        self.momentum_model: ContrastiveModel | None = None
        self._pending_state: dict[str, Any] | None = None
        # BCL / diagnostics: keep what the per-sample losses of the last step need
        self.track_samples = False
        self._last_terms: list[torch.Tensor] = []

    # --- setup and state ---------------------------------------------------------------
    def setup(self, model: ContrastiveModel) -> None:
        """Create the momentum copy from ``model`` (once; later calls do nothing)."""
        if self.momentum_model is not None:
            return
        self.momentum_model = momentum_copy(model)
        self._setup_extra(model)
        if self._pending_state is not None:
            state, self._pending_state = self._pending_state, None
            self.load_state_dict(state)

    def _setup_extra(self, model: ContrastiveModel) -> None:
        pass

    def extra_parameters(self) -> list[nn.Parameter]:
        return []

    def state_dict(self) -> dict[str, Any]:
        if self.momentum_model is None:
            if self._pending_state is not None:
                return self._pending_state
            raise RuntimeError("nothing to save before setup(model) or the first loss")
        return {
            "momentum_model": self.momentum_model.state_dict(),
            "momentum": self.momentum,
            **self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.momentum_model is None:
            self._pending_state = state  # applied by setup()
            return
        self.momentum_model.load_state_dict(state["momentum_model"])
        self.momentum = float(state["momentum"])
        self._load_extra(state)

    def _load_extra(self, state: dict[str, Any]) -> None:
        pass

    @torch.no_grad()
    def sample_losses(self) -> torch.Tensor:
        """[B] per-sample losses of the last ``loss`` call (``track_samples`` set before it),
        each the mean over the sample's anchors (queries / predictions), as float32 (what
        BCL's memory and the diagnostics keep), like :meth:`SimCLR.sample_losses`."""
        if not self._last_terms:
            raise RuntimeError("set track_samples = True before the loss to get sample losses")
        return torch.stack([self._per_sample(t) for t in self._last_terms]).mean(0).float()

    def _per_sample(self, term: Any) -> torch.Tensor:
        raise NotImplementedError

    # --- momentum ---------------------------------------------------------------------
    def set_progress(self, fraction: float) -> None:
        """With ``cosine_momentum``: m = 1 - (1 - m_base) * (cos(pi * fraction) + 1) / 2."""
        if self.cosine_momentum:
            f = min(max(float(fraction), 0.0), 1.0)
            self.momentum = 1.0 - (1.0 - self.base_momentum) * (math.cos(math.pi * f) + 1) / 2

    @torch.no_grad()
    def after_step(self, model: ContrastiveModel) -> None:
        """key = m * key + (1 - m) * online, for every parameter (call after opt.step())."""
        if self.momentum_model is None:
            self.setup(model)
            return
        online = dict(model.named_parameters())
        pairs = [(p, online[name]) for name, p in self.momentum_model.named_parameters()]
        keys = [k for k, _ in pairs]
        torch._foreach_mul_(keys, self.momentum)
        torch._foreach_add_(keys, [o.detach() for _, o in pairs], alpha=1.0 - self.momentum)

    # --- forwards ---------------------------------------------------------------------
    def _check_ready(self, model: ContrastiveModel) -> None:
        self.setup(model)
        if self.pruned and self.masks is None:
            raise RuntimeError("on_epoch_start must run before the first pruned step")

    @property
    def _branch2(self) -> int:
        return 1 if self.dual_bn else 0

    def _online(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(z1, z2, joint): view 1 dense, view 2 through the pruned branch (BN copy 1 with
        dual BN); one joint forward when neither applies (``joint`` True)."""
        if not self.pruned and not self.dual_bn:
            z1, z2 = model(torch.cat([view1, view2])).chunk(2)
            return z1, z2, True
        z1 = model(view1, branch=0)
        z2 = model(view2, branch=self._branch2, masks=self.masks)
        return z1, z2, False

    @torch.no_grad()
    def _momentum_forward(self, model: ContrastiveModel, x: torch.Tensor) -> torch.Tensor:
        """The dense momentum network (always branch 0, no mask), in the online model's
        train / eval mode; float32 (or float64) output."""
        target = self.momentum_model
        target.train(model.training)
        return upcast_half(target(x, branch=0))
