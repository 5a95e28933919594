"""MoCo v2 (with optional MoCHi hard negatives) as a method object, plus the shared momentum
machinery that BYOL (:mod:`sdclr.methods.byol`) builds on.

Interface (that of :class:`sdclr.methods.simclr.ContrastiveMethod`, plus the calls after
``loss``):

- ``pruned`` (bool), ``masks`` (``{conv weight name: mask}`` or None) and
  ``on_epoch_start(model) -> density | None``: the SDCLR self-competitor's global magnitude
  mask, recomputed from the dense online weights at every epoch start. It is computed by a
  composed :class:`ContrastiveMethod`, so the mask is exactly SDCLR's.
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
:class:`ContrastiveMethod`.

Distributed: under torch.distributed the keys of all ranks are gathered before they are
enqueued (every rank keeps the same queue; the initial queue is broadcast from rank 0); this
path was checked by hand with two gloo processes but has no test in the suite, and the runner
refuses MoCo and BYOL under torchrun (:func:`sdclr.config.validate.check_world_size`). There is no
Shuffle BN: as for SimCLR / SDCLR here, BN statistics are those of the whole (global, with
global BN) batch, which is SimCLR's answer to the same information leak, and MoCo v3 drops
Shuffle BN as well.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sdclr.errors import ConfigError
from sdclr.losses.contrastive import KINDS, debiased_from_logits
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.contrastive import ContrastiveModel
from sdclr.utils.distributed import gather_with_grad, is_distributed, world_size
from sdclr.utils.precision import full_precision, upcast_half

MOCHI_DEFAULTS = {"N": 1024, "s": 1024, "s_prime": 256}


def momentum_copy(model: nn.Module) -> nn.Module:
    """A frozen deepcopy of ``model``; submodules compiled in the online model (``.compile()``,
    as the loop's ``prepare_model`` does) are compiled in the copy too (deepcopy drops it)."""
    copied = copy.deepcopy(model)
    for (_, src), (_, dst) in zip(model.named_modules(), copied.named_modules()):
        if getattr(src, "_compiled_call_impl", None) is not None:
            dst.compile()
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


class MomentumMethod:
    """What MoCo and BYOL share: the SDCLR mask, the online forward with the dense / pruned
    branches, the momentum copy, its EMA update and momentum schedule."""

    def __init__(
        self,
        momentum: float,
        cosine_momentum: bool = False,
        prune_ratio: float | None = None,
        random_ratio: float = 0.0,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
    ):
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"the momentum must lie in [0, 1], got {momentum}")
        self.base_momentum = float(momentum)
        self.momentum = float(momentum)
        self.cosine_momentum = cosine_momentum
        self.prune_ratio = prune_ratio
        self.random_ratio = random_ratio
        self.dual_bn = dual_bn
        self.generator = generator  # random pruning (and MoCo's queue init / MoCHi draws)
        # the mask is exactly SDCLR's: computed by a ContrastiveMethod (temperature unused)
        self._masker = ContrastiveMethod(1.0, prune_ratio, random_ratio, dual_bn, generator)
        self.momentum_model: ContrastiveModel | None = None
        self._pending_state: dict[str, Any] | None = None
        # BCL / diagnostics: keep what the per-sample losses of the last step need
        self.track_samples = False
        self._last_terms: list[torch.Tensor] = []

    # --- SDCLR mask -------------------------------------------------------------------
    @property
    def pruned(self) -> bool:
        return self.prune_ratio is not None

    @property
    def masks(self) -> dict[str, torch.Tensor] | None:
        return self._masker.masks

    @masks.setter
    def masks(self, value: dict[str, torch.Tensor] | None) -> None:
        self._masker.masks = value

    def on_epoch_start(self, model: ContrastiveModel) -> float | None:
        """Recompute the mask from the current dense online weights; returns its density."""
        return self._masker.on_epoch_start(model)

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
        BCL's memory and the diagnostics keep), like :meth:`ContrastiveMethod.sample_losses`."""
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


def moco_logits(
    q: torch.Tensor,
    k: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
    mochi: dict[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, 1 + K (+ s + s')] logits: column 0 is q.k+, then q.queue, then MoCHi's synthetic
    negatives; all divided by the temperature. ``q``, ``k``, ``queue`` are L2-normalised."""
    with full_precision(q.device.type):  # float32 similarities inside a bf16 step
        q, k, queue = upcast_half(q), upcast_half(k), upcast_half(queue)
        pos = (q * k).sum(1, keepdim=True)
        neg = q @ queue.t()
        parts = [pos, neg]
        if mochi:
            parts.append(mochi_logits(q, neg, queue, mochi, generator))
        return torch.cat(parts, 1) / temperature


def info_nce(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive in column 0, averaged over the batch."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def mochi_negatives(
    q: torch.Tensor,
    neg: torch.Tensor,
    queue: torch.Tensor,
    mochi: dict[str, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MoCHi (Kalantidis et al. 2020) synthetic negatives, [B, s + s', d], no gradient.

    For each query, the ``N`` hardest queue negatives (highest q.n) are kept; ``s`` negatives
    mix two of them, h = a n_i + (1 - a) n_j with a ~ U(0, 1); ``s_prime`` mix the query in,
    h' = b q + (1 - b) n_j with b ~ U(0, 0.5); all L2-normalised."""
    with torch.no_grad():
        b, dev = q.shape[0], q.device
        n = min(int(mochi["N"]), queue.shape[0])
        s, s_prime = int(mochi["s"]), int(mochi["s_prime"])
        hard = neg.detach().topk(n, dim=1).indices  # [B, n] queue rows
        gen_dev = generator.device if generator is not None else dev

        def draw_idx(count: int) -> torch.Tensor:
            i = torch.randint(0, n, (b, count), generator=generator, device=gen_dev).to(dev)
            return queue[hard.gather(1, i)]  # [B, count, d]

        def uniform(count: int, high: float) -> torch.Tensor:
            u = torch.rand(b, count, 1, generator=generator, device=gen_dev).to(dev)
            return u * high

        synth = []
        if s > 0:
            alpha = uniform(s, 1.0)
            synth.append(alpha * draw_idx(s) + (1 - alpha) * draw_idx(s))
        if s_prime > 0:
            beta = uniform(s_prime, 0.5)
            synth.append(beta * q.detach()[:, None, :] + (1 - beta) * draw_idx(s_prime))
        if not synth:
            return q.new_zeros(b, 0, q.shape[1])
        return F.normalize(torch.cat(synth, 1), dim=2)


def mochi_logits(
    q: torch.Tensor,
    neg: torch.Tensor,
    queue: torch.Tensor,
    mochi: dict[str, int],
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """q . h for the synthetic negatives (gradient to q only), [B, s + s']."""
    h = mochi_negatives(q, neg, queue, mochi, generator)
    return torch.einsum("bd,bsd->bs", q, h)


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
    ``loss``: ``ntxent`` (InfoNCE), or ``debiased`` / ``hard`` (the estimator of
    :func:`sdclr.losses.contrastive.debiased_from_logits` over the queue's (and MoCHi's)
    negatives, with ``tau_plus`` and ``beta``).
    """

    def __init__(
        self,
        temperature: float = 0.2,
        queue_size: int = 4096,
        momentum: float = 0.99,
        symmetric: bool = True,
        mochi: dict[str, Any] | None = None,
        cosine_momentum: bool = False,
        prune_ratio: float | None = None,
        random_ratio: float = 0.0,
        dual_bn: bool = False,
        generator: torch.Generator | None = None,
        loss: str = "ntxent",
        tau_plus: float = 0.1,
        beta: float = 1.0,
    ):
        super().__init__(momentum, cosine_momentum, prune_ratio, random_ratio, dual_bn, generator)
        if loss not in KINDS:
            raise ConfigError(f"unknown MoCo loss {loss!r}; use {', '.join(KINDS)}")
        self.loss_kind = loss
        self.tau_plus = float(tau_plus) if loss != "ntxent" else 0.0
        self.beta = float(beta) if loss == "hard" else 0.0
        if queue_size < 1:
            raise ConfigError(f"the MoCo queue needs at least one entry, got {queue_size}")
        if prune_ratio is not None and not symmetric:
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
