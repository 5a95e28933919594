"""Contrastive losses over the global batch across ranks: NT-Xent (the SimCLR loss), its
debiased variant (Chuang et al. 2020) and hard-negative sampling (Robinson et al. 2021)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from sdclr.utils.distributed import gather_with_grad, rank
from sdclr.utils.precision import full_precision, upcast_half

KINDS = ("ntxent", "debiased", "hard")
_REDUCTIONS = ("mean", "none")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _normalize(z: torch.Tensor) -> torch.Tensor:
    return F.normalize(upcast_half(z), dim=1)


def _logits(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Unmasked logits [2B, 2N] of this rank's anchors [z1; z2] against the keys of every
    rank, with the column of each anchor itself and of its positive (the other view)."""
    z1, z2 = _normalize(z1), _normalize(z2)
    local = z1.shape[0]
    keys = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # [2N, d]
    n = keys.shape[0] // 2
    offset = rank() * local if n != local else 0
    anchors = torch.cat([z1, z2])  # [2B, d]
    with full_precision(anchors.device.type):
        logits = anchors @ keys.t() / temperature
    idx = torch.arange(local, device=z1.device) + offset
    self_idx = torch.cat([idx, idx + n])
    pos_idx = torch.cat([idx + n, idx])
    return logits, self_idx, pos_idx


def nt_xent(
    z1: torch.Tensor, z2: torch.Tensor, temperature: float, reduction: str = "mean"
) -> torch.Tensor:
    """Mean over the 2N anchors of -log(exp(s+/t) / sum_{j != anchor} exp(s_j/t)).

    ``z1[i]`` and ``z2[i]`` are the two views of image i. Every other vector of the global
    batch, from either branch, is a negative. Under torch.distributed each rank passes its
    local slice; features are gathered (gradients flow back to their owners) and each rank
    averages over its own anchors, which DDP's gradient averaging turns into the global mean.
    ``reduction="none"`` returns the 2B per-anchor losses, ordered [anchors of z1; of z2].
    """
    _check_reduction(reduction)
    logits, self_idx, pos_idx = _logits(z1, z2, temperature)
    # an anchor is not its own negative (scatter of a number: no host-to-device copy, which
    # indexed assignment of a Python float would make, with a synchronisation, on CUDA)
    logits = logits.scatter(1, self_idx[:, None], float("-inf"))
    return F.cross_entropy(logits, pos_idx, reduction=reduction)


def _negative_columns(self_idx: torch.Tensor, pos_idx: torch.Tensor, m: int) -> torch.Tensor:
    """[2B, M] column indices of each anchor's negatives: every column but the anchor's own
    and its positive's, in increasing order (a gather instead of a boolean mask, whose output
    size would need a host synchronisation on the GPU)."""
    lo = torch.minimum(self_idx, pos_idx)[:, None]
    hi = torch.maximum(self_idx, pos_idx)[:, None]
    cols = torch.arange(m, device=self_idx.device).expand(len(self_idx), m)
    cols = cols + (cols >= lo)
    return cols + (cols >= hi)


def hard_nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    tau_plus: float,
    beta: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Debiased loss with hard-negative importance weights exp(beta * s/t) (Robinson et al.
    2021, "Contrastive Learning with Hard Negative Samples"): the negative term becomes
    M * sum(w * exp(s/t)) / sum(w), which up-weights negatives close to the anchor; then the
    debiasing and clamp of :func:`debiased_nt_xent`. ``beta=0`` is exactly the debiased loss.

    Same anchors, negatives (the M = 2N-2 other vectors of the global batch), rank semantics
    and ``reduction`` as :func:`nt_xent`. Computed in log space, so small temperatures neither
    overflow nor turn the clamped branch into NaN gradients.
    """
    _check_reduction(reduction)
    if not 0.0 <= tau_plus < 1.0:
        raise ValueError(f"tau_plus must be in [0, 1), got {tau_plus}")
    if not math.isfinite(beta):
        raise ValueError(f"beta must be finite, got {beta}")
    logits, self_idx, pos_idx = _logits(z1, z2, temperature)
    two_b, two_n = logits.shape
    m = two_n - 2  # negatives per anchor
    if m < 1:
        raise ValueError("the global batch needs at least 2 images to have negatives")
    rows = torch.arange(two_b, device=logits.device)
    pos = logits[rows, pos_idx]  # s+/t, [2B]
    neg = logits.gather(1, _negative_columns(self_idx, pos_idx, m))  # s_j/t, [2B, M]

    loss = debiased_from_logits(pos, neg, temperature, tau_plus, beta)
    return loss.mean() if reduction == "mean" else loss


def debiased_from_logits(
    pos: torch.Tensor, neg: torch.Tensor, temperature: float, tau_plus: float, beta: float
) -> torch.Tensor:
    """Per-anchor hard/debiased loss from positive logits ``pos`` [A] and negative logits
    ``neg`` [A, M] (both already divided by the temperature, features L2-normalised), so
    any method with negatives (SimCLR's batch, MoCo's queue) shares the estimator.
    ``tau_plus=0, beta=0`` is plain cross-entropy with the positive first."""
    m = neg.shape[1]
    # log of the (reweighted) sum over negatives
    if beta == 0:
        log_neg = torch.logsumexp(neg, dim=1)
    else:
        log_neg = (
            math.log(m)
            + torch.logsumexp((1.0 + beta) * neg, dim=1)
            - torch.logsumexp(beta * neg, dim=1)
        )
    # log((exp(log_neg) - M tau+ exp(s+/t)) / (1 - tau+)), defined where the bracket is > 0
    log_ratio = (math.log(m * tau_plus) if tau_plus > 0 else -math.inf) + pos - log_neg
    valid = log_ratio < 0
    safe = torch.where(valid, log_ratio, torch.full_like(log_ratio, -1.0))
    log_debiased = log_neg + torch.log1p(-torch.exp(safe)) - math.log1p(-tau_plus)
    log_debiased = torch.where(valid, log_debiased, torch.full_like(log_debiased, -math.inf))
    # clamp at the smallest value the true sum can take, M * exp(-1/t) (|s| <= 1)
    log_ng = torch.clamp(log_debiased, min=math.log(m) - 1.0 / temperature)
    loss = torch.logaddexp(pos, log_ng) - pos  # -log(exp(s+/t) / (exp(s+/t) + Ng))
    return loss


def debiased_nt_xent(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    tau_plus: float,
    reduction: str = "mean",
) -> torch.Tensor:
    """Debiased contrastive loss (Chuang et al. 2020, "Debiased Contrastive Learning").

    Some "negatives" share the anchor's class (prior ``tau_plus``); their expected share,
    M * tau+ * exp(s+/t), is removed from the negative sum:
    Ng = max((sum_neg exp(s/t) - M tau+ exp(s+/t)) / (1 - tau+), M exp(-1/t)) and
    loss = -log(exp(s+/t) / (exp(s+/t) + Ng)). ``tau_plus=0`` is :func:`nt_xent`. Same
    anchors, negatives, rank semantics and ``reduction`` as :func:`nt_xent`.
    """
    return hard_nt_xent(z1, z2, temperature, tau_plus, 0.0, reduction)


def contrastive_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    temperature: float,
    kind: str = "ntxent",
    tau_plus: float = 0.1,
    beta: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """One entry point for the losses, chosen by ``kind`` in ("ntxent", "debiased", "hard");
    ``tau_plus`` and ``beta`` are ignored by the losses that do not use them."""
    if kind == "ntxent":
        return nt_xent(z1, z2, temperature, reduction)
    if kind == "debiased":
        return debiased_nt_xent(z1, z2, temperature, tau_plus, reduction)
    if kind == "hard":
        return hard_nt_xent(z1, z2, temperature, tau_plus, beta, reduction)
    raise ValueError(f"unknown contrastive loss kind {kind!r}; expected one of {KINDS}")
