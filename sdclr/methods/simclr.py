"""SimCLR and SDCLR as one thin piece over the shared model, loss and pruning; and
:func:`build_method`, the config's method (simclr, moco, byol) as a method object.

SimCLR (no pruned branch, shared BN): both views in one forward pass, as the reference does.
SDCLR: view 1 through the dense branch, view 2 through the pruned branch (weight * mask,
BN copy 1 when dual); one contrastive loss over both and a single backward, which is the same
gradient as the reference's separate dense and pruned passes (tests/test_method.py). With
``fuse_branches`` the two branches run as one pass of grouped convolutions
(:meth:`sdclr.models.contrastive.ContrastiveModel.forward_pair`; same outputs and
gradients). The loss is NT-Xent, or its debiased / hard-negative variants
(:func:`sdclr.losses.contrastive.contrastive_loss`).

Every method object has the same interface, which the pretraining loop relies on:
``pruned``, ``masks``, ``on_epoch_start(model)``, ``loss(model, view1, view2)``,
``setup(model)``, ``extra_parameters()``, ``after_step(model)``, ``set_progress(fraction)``,
``state_dict()`` / ``load_state_dict(state)``, and for BCL and the diagnostics
``track_samples`` (bool) with ``sample_losses()``: the detached per-sample losses of the last
``loss`` call (each sample's mean over its anchors), computed from detached copies of that
call's features or logits, so the gradient path is untouched and no random draw is repeated.
MoCo and BYOL (:mod:`sdclr.methods.moco`, :mod:`sdclr.methods.byol`) also have ``momentum``
and, with MoCo, ``temperature``; the loop sets ``temperature`` at every epoch start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sdclr.losses.contrastive import contrastive_loss
from sdclr.models.contrastive import ContrastiveModel, check_fusable, warn_if_fused_on_cpu
from sdclr.models.pruning import conv_weights, magnitude_masks, mask_density


class ContrastiveMethod:
    def __init__(
        self,
        temperature: float,
        prune_ratio: float | None = None,
        random_ratio: float = 0.0,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
        loss: str = "ntxent",
        tau_plus: float = 0.1,
        beta: float = 1.0,
        fuse_branches: bool = False,
    ):
        self.temperature = temperature
        self.prune_ratio = prune_ratio
        self.random_ratio = random_ratio
        self.dual_bn = dual_bn
        self.generator = generator  # drives random pruning only
        self.loss_kind = loss
        self.tau_plus = tau_plus
        self.beta = beta
        self.fuse_branches = fuse_branches  # both branches in one grouped-conv pass
        self.masks: dict[str, torch.Tensor] | None = None
        self.track_samples = False
        self._last: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def pruned(self) -> bool:
        return self.prune_ratio is not None

    @property
    def fuses(self) -> bool:
        """Whether the branches run as one fused pass: ``fuse_branches`` with two branches to
        fuse (SimCLR with shared BN is one pass of both views already)."""
        return self.fuse_branches and (self.pruned or self.dual_bn)

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


def build_method(cfg, generator: torch.Generator | None = None):
    """The method object of a config: ``method.name`` with the prune ratio, BN mode, loss and
    the method's own keys. ``generator`` drives random pruning, MoCo's initial queue and
    MoCHi's draws (the loop's generator, so checkpoints capture it)."""
    from sdclr.config.derived import bn_mode

    name = cfg.method.name
    prune = cfg.prune.ratio
    random_ratio = float(cfg.prune.random_ratio)
    dual = bn_mode(cfg) == "dual"
    m = cfg.method
    if name == "simclr":
        return ContrastiveMethod(
            float(cfg.pretrain.temperature),
            prune,
            random_ratio,
            dual,
            generator,
            loss=str(cfg.loss.name),
            tau_plus=float(cfg.loss.tau_plus),
            beta=float(cfg.loss.beta),
            fuse_branches=bool(cfg.fuse_branches),
        )
    if name == "moco":
        from sdclr.methods.moco import MoCo

        mochi = (
            {"N": int(m.mochi_n), "s": int(m.mochi_s), "s_prime": int(m.mochi_s_prime)}
            if m.mochi
            else None
        )
        return MoCo(
            temperature=float(cfg.pretrain.temperature),
            queue_size=int(m.queue_size),
            momentum=float(m.momentum),
            symmetric=bool(m.symmetric),
            mochi=mochi,
            cosine_momentum=bool(m.cosine_momentum),
            prune_ratio=prune,
            random_ratio=random_ratio,
            dual_bn=dual,
            generator=generator,
            loss=str(cfg.loss.name),
            tau_plus=float(cfg.loss.tau_plus),
            beta=float(cfg.loss.beta),
        )
    if name == "byol":
        from sdclr.methods.byol import BYOL

        return BYOL(
            hidden_dim=int(m.predictor_hidden),
            tau=float(m.momentum),
            cosine_tau=bool(m.cosine_momentum),
            prune_ratio=prune,
            random_ratio=random_ratio,
            dual_bn=dual,
            generator=generator,
        )
    raise ValueError(f"unknown method {name!r}")
