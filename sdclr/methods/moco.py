"""MoCo v2 (with optional MoCHi hard negatives) as a method object, on the momentum machinery
of :mod:`sdclr.methods.momentum` (which lists the interface), with its objective in
:mod:`sdclr.losses.moco`.

Pruning (prune ratio given, the SDCLR self-competitor): the *online* network's view 2 goes
through the pruned branch (``branch=1`` with dual BN, conv weights times the mask), view 1
through the dense branch, exactly as SDCLR's two branches; the key / target network always
runs dense. So ``q1 = online_dense(view1)``, ``q2 = online_pruned(view2)`` and the keys
``k1, k2`` come from the dense momentum encoder; the loss is ``InfoNCE(q1, k2) +
InfoNCE(q2, k1)``. Reasons: the pruned copy then competes inside the network that receives
gradients, as in SDCLR (its gradient reaches the shared dense weights through ``w * mask``),
and both pruned and dense queries are pulled towards the same stable dense targets, so the
samples the pruned network forgets (the tail) get a large loss and thus more gradient. A
pruned momentum encoder would only change slowly-moving targets and the queue would mix
dense and pruned keys. Pruning needs the symmetric loss (with a single query there is no
place for both branches).

Without a prune ratio and without dual BN, both views go through the online network in one
forward (one BN batch of 2B, as SimCLR here does); with dual BN view 2 uses BN copy 1, as in
:class:`SimCLR`.

Distributed: under torch.distributed the keys of all ranks are gathered before they are
enqueued (every rank keeps the same queue; the initial queue is broadcast from rank 0); this
path was checked by hand with two gloo processes but has no test in the suite, and the runner
refuses MoCo and BYOL under torchrun (:func:`sdclr.config.validate.check_world_size`). There is no
Shuffle BN: as for SimCLR / SDCLR here, BN statistics are those of the whole (global, with
global BN) batch, which is SimCLR's answer to the same information leak, and MoCo v3 drops
Shuffle BN as well.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from sdclr.config.derived import bn_mode
from sdclr.errors import ConfigError
from sdclr.losses.contrastive import KINDS, debiased_from_logits
from sdclr.losses.moco import info_nce, moco_logits
from sdclr.methods.base import Objective
from sdclr.methods.momentum import MomentumMethod, broadcast_, head_out_dim
from sdclr.models.contrastive import ContrastiveModel
from sdclr.models.pruning import SelfCompetitor, build_competitor
from sdclr.utils.distributed import gather_with_grad
from sdclr.utils.precision import upcast_half

MOCHI_DEFAULTS = {"N": 1024, "s": 1024, "s_prime": 256}


def mochi_config(mochi: dict[str, Any] | None) -> dict[str, int] | None:
    if mochi is None:
        return None
    unknown = set(mochi) - set(MOCHI_DEFAULTS)
    if unknown:
        raise ConfigError(f"mochi: unknown keys {sorted(unknown)}; use N, s, s_prime")
    out = {**MOCHI_DEFAULTS, **{k: int(v) for k, v in mochi.items()}}
    if out["N"] < 1 or out["s"] < 0 or out["s_prime"] < 0:
        raise ConfigError(f"mochi: need N >= 1, s >= 0, s_prime >= 0, got {out}")
    return out


class MoCo(MomentumMethod):
    """MoCo v2: query = online ContrastiveModel (MLP head), key = its momentum copy, a queue
    of ``queue_size`` negatives, InfoNCE over [q.k+, q.queue] / temperature with label 0.

    ``symmetric`` (default): both views serve as queries, loss = InfoNCE(q1, k2) +
    InfoNCE(q2, k1) (the sum, as MoCo v3 and the MoCo CIFAR demo), and both k1 and k2 are
    enqueued (2B keys per step); otherwise loss = InfoNCE(q1, k2) and k2 is enqueued. The
    keys enter the queue after the loss (the oldest are overwritten, wrapping around when
    the batch does not divide ``queue_size``). The queue starts as random unit vectors (as in
    the reference code). ``mochi``: None, or a dict with ``N`` (hardest negatives to mix
    from), ``s`` (pair mixtures), ``s_prime`` (query mixtures); defaults 1024, 1024, 256.
    ``objective``: its ``kind`` ``ntxent`` (InfoNCE), or ``debiased`` / ``hard`` (the
    estimator of :func:`sdclr.losses.contrastive.debiased_from_logits` over the queue's (and
    MoCHi's) negatives, with ``tau_plus`` and ``beta``). ``prune_ratio``: the
    self-competitor, as :class:`sdclr.methods.momentum.MomentumMethod` takes it.
    """

    def __init__(
        self,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        symmetric: bool = True,
        mochi: dict[str, Any] | None = None,
        cosine_momentum: bool = False,
        prune_ratio: SelfCompetitor | float | None = None,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
        objective: Objective | None = None,
    ):
        super().__init__(momentum, cosine_momentum, prune_ratio, dual_bn, generator)
        objective = objective or Objective()
        loss = objective.kind
        if loss not in KINDS:
            raise ConfigError(f"unknown MoCo loss {loss!r}; use {', '.join(KINDS)}")
        self.loss_kind = loss
        self.tau_plus = float(objective.tau_plus) if loss != "ntxent" else 0.0
        self.beta = float(objective.beta) if loss == "hard" else 0.0
        if queue_size < 1:
            raise ConfigError(f"the MoCo queue needs at least one entry, got {queue_size}")
        if self.pruned and not symmetric:
            raise ConfigError(
                "MoCo with a prune ratio needs symmetric=true: view 1 goes through the dense "
                "branch and view 2 through the pruned one, each as a query"
            )
        self.temperature = temperature
        self.queue_size = int(queue_size)
        self.symmetric = symmetric
        self.mochi = mochi_config(mochi)
        self.queue: torch.Tensor | None = None  # [K, d], rows L2-normalised
        self.queue_ptr = 0

    def _setup_extra(self, model: ContrastiveModel) -> None:
        like = next(model.parameters())  # the queue takes the model's device and dtype
        gen_dev = self.generator.device if self.generator is not None else like.device
        shape = (self.queue_size, head_out_dim(model))
        queue = torch.randn(shape, generator=self.generator, device=gen_dev).to(like)
        self.queue = F.normalize(queue, dim=1)
        broadcast_([self.queue])
        self.queue_ptr = 0

    def _extra_state(self) -> dict[str, Any]:
        return {"queue": self.queue.clone(), "queue_ptr": self.queue_ptr}

    def _load_extra(self, state: dict[str, Any]) -> None:
        self.queue = state["queue"].to(self.queue.device, self.queue.dtype).clone()
        self.queue_size = self.queue.shape[0]
        self.queue_ptr = int(state["queue_ptr"])

    def keys(self, model: ContrastiveModel, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised keys of ``x`` from the momentum encoder (no gradient)."""
        return F.normalize(self._momentum_forward(model, x), dim=1)

    def loss(
        self, model: ContrastiveModel, view1: torch.Tensor, view2: torch.Tensor
    ) -> torch.Tensor:
        self._check_ready(model)
        self._last_terms = []
        queue = self.queue
        if self.symmetric:
            k1, k2 = self.keys(model, torch.cat([view1, view2])).chunk(2)
            z1, z2, _ = self._online(model, view1, view2)
            q1 = F.normalize(upcast_half(z1), dim=1)
            q2 = F.normalize(upcast_half(z2), dim=1)
            loss = self._nce(q1, k2, queue) + self._nce(q2, k1, queue)
            self.enqueue(torch.cat([k1, k2]))
        else:
            k2 = self.keys(model, view2)
            q1 = F.normalize(upcast_half(model(view1, branch=0)), dim=1)
            loss = self._nce(q1, k2, queue)
            self.enqueue(k2)
        return loss

    def _nce(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        logits = moco_logits(q, k, queue, self.temperature, self.mochi, self.generator)
        if self.track_samples:
            self._last_terms.append(logits.detach())
        if self.loss_kind == "ntxent":
            return info_nce(logits)
        return self._per_sample(logits).mean()

    def _per_sample(self, logits: torch.Tensor) -> torch.Tensor:
        if self.loss_kind != "ntxent":
            logits = upcast_half(logits)
            return debiased_from_logits(
                logits[:, 0], logits[:, 1:], self.temperature, self.tau_plus, self.beta
            )
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        return F.cross_entropy(upcast_half(logits), labels, reduction="none")

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (gathered over ranks) at the pointer, wrapping around; the queue
        tensor is replaced, not written in place, so a graph that used it stays valid."""
        keys = gather_with_grad(keys.detach().to(self.queue.dtype))
        b, k = keys.shape[0], self.queue_size
        start = max(0, b - k)  # more keys than slots: only the last K survive
        slots = (self.queue_ptr + torch.arange(start, b, device=keys.device)) % k
        self.queue = self.queue.index_copy(0, slots, keys[start:])
        self.queue_ptr = (self.queue_ptr + b) % k

    @classmethod
    def from_config(cls, cfg, generator: torch.Generator | None = None) -> MoCo:
        """``method=moco``: the queue, momentum and MoCHi keys, the loss, the prune ratio and
        BN mode; ``generator`` also draws the initial queue and MoCHi's mixtures."""
        m = cfg.method
        mochi = (
            {"N": int(m.mochi_n), "s": int(m.mochi_s), "s_prime": int(m.mochi_s_prime)}
            if m.mochi
            else None
        )
        return cls(
            temperature=float(cfg.pretrain.temperature),
            queue_size=int(m.queue_size),
            momentum=float(m.momentum),
            symmetric=bool(m.symmetric),
            mochi=mochi,
            cosine_momentum=bool(m.cosine_momentum),
            prune_ratio=build_competitor(cfg, generator),
            dual_bn=bn_mode(cfg) == "dual",
            generator=generator,
            objective=Objective.from_config(cfg),
        )
