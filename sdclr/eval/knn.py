"""Online weighted-kNN monitor (Wu et al. 2018, InstDisc; as in the usual SimCLR/MoCo monitors).

A cheap, training-free read-out of representation quality: label the test images by a
similarity-weighted vote of their k nearest training features. Unlike the linear probe it
needs no optimisation, so it can run every few epochs during pretraining. Results are broken
down by Many / Medium / Few exactly as the probes are (:func:`sdclr.eval.metrics.summarize`).

Under torchrun the monitor is shared: each rank encodes its share of the bank and of the
queries (whole batches of the single-process run, so every feature is computed on the same
batch as there), rank 0 gathers them, votes and sends the result to the others. On
ImageNet-LT-exp the bank is the whole pool (1.26 M images): one rank encoding it alone
while the others wait would outlast the process group's timeout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdclr.data.banks import Images, as_images
from sdclr.eval.features import EvalSettings, extract_bank_features
from sdclr.eval.metrics import summarize
from sdclr.models.contrastive import evaluating
from sdclr.utils.distributed import broadcast_object, gather_rows, rank, world_size


def _check_inputs(
    bank_feats: Tensor, bank_labels: Tensor, query_feats: Tensor, num_classes: int, k: int
) -> None:
    if bank_feats.ndim != 2 or query_feats.ndim != 2:
        raise ValueError(
            f"knn: features must be 2-D [N, D]; got bank {tuple(bank_feats.shape)}, "
            f"query {tuple(query_feats.shape)}"
        )
    if bank_feats.shape[1] != query_feats.shape[1]:
        raise ValueError(
            f"knn: bank and query feature widths differ ({bank_feats.shape[1]} vs "
            f"{query_feats.shape[1]})"
        )
    if bank_labels.shape != (bank_feats.shape[0],):
        raise ValueError(
            f"knn: bank_labels must have shape [{bank_feats.shape[0]}]; got "
            f"{tuple(bank_labels.shape)}"
        )
    if len(bank_feats) == 0:
        raise ValueError("knn: the feature bank is empty")
    if k < 1:
        raise ValueError(f"knn: k must be >= 1; got {k}")
    # One sync, before the loop: an out-of-range label would otherwise surface as an opaque
    # device-side assert inside scatter.
    lo, hi = int(bank_labels.min()), int(bank_labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"knn: bank labels must lie in [0, {num_classes}); got {lo}..{hi}")


def _topk_lowest_index_ties(sim: Tensor, k: int, rev_index: Tensor) -> tuple[Tensor, Tensor]:
    """``sim.topk(k)`` with ties at the k-th value broken towards the lowest bank index.

    ``topk`` leaves the choice among equal values unspecified (it can differ by device, by
    chunk shape and between the CPU and CUDA kernels); duplicate images or all-zero features
    make such ties real. Entries strictly above the k-th value are unambiguous; the remaining
    slots are filled with the lowest-index bank entries equal to it. The neighbour *set* is
    thus fixed (equal values may still come in either order, which cannot change the vote).
    Costs one extra integer top-k over the chunk instead of a full (stable) sort.
    """
    vals, idx = sim.topk(k, dim=1)  # sorted, descending
    kth = vals[:, -1:]
    n_above = (vals > kth).sum(dim=1, keepdim=True)
    # rev_index = B - arange(B): the largest keys are the lowest indices; non-ties get -1
    key = torch.where(sim == kth, rev_index, -1)
    first_tied = key.topk(k, dim=1).indices  # tied bank indices, ascending
    slot = torch.arange(k, device=sim.device)
    tied_slot = (slot - n_above).clamp_(min=0)
    idx = torch.where(slot < n_above, idx, first_tied.gather(1, tied_slot))
    return vals, idx  # tied slots all hold the k-th value, so vals is unchanged


def knn_predict(
    bank_feats: Tensor,
    bank_labels: Tensor,
    query_feats: Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> Tensor:
    """Weighted-kNN labels for ``query_feats`` [Q, D] from a bank [B, D] with labels [B].

    Cosine similarity of L2-normalised features; the k nearest (k clipped to B) vote with
    weight exp(sim / temperature); the class with the largest summed weight wins. Queries are
    processed ``chunk_size`` at a time, so peak memory is about ``chunk_size * (B + k * C)``
    floats (C = ``num_classes``; lower ``chunk_size`` for large banks or many classes).
    Everything stays on the features' device with no host sync in the loop. Deterministic
    ties: equal similarities at the k-th place go to the lowest bank index, equal class scores
    to the lowest class id (``argmax``), and class scores are summed by a plain reduction
    rather than ``scatter_add`` (whose CUDA atomics sum in a run-dependent order).
    Returns int64 predictions [Q] on the features' device.
    """
    _check_inputs(bank_feats, bank_labels, query_feats, num_classes, k)
    if temperature <= 0 or chunk_size < 1:
        raise ValueError(
            f"knn: temperature must be > 0 and chunk_size >= 1; got {temperature}, {chunk_size}"
        )
    device = bank_feats.device
    n_bank = len(bank_feats)
    k = min(int(k), n_bank)
    bank = F.normalize(bank_feats.float(), dim=1)
    labels = bank_labels.to(device=device, dtype=torch.long)
    queries = query_feats.to(device)
    index_dtype = torch.int32 if n_bank < 2**31 - 1 else torch.int64
    rev_index = n_bank - torch.arange(n_bank, device=device, dtype=index_dtype)
    preds = []
    for start in range(0, len(queries), chunk_size):
        q = F.normalize(queries[start : start + chunk_size].float(), dim=1)
        sim = q @ bank.T  # [n, B]
        vals, idx = _topk_lowest_index_ties(sim, k, rev_index)
        # Shifting by the row maximum leaves the argmax unchanged and keeps exp() from
        # overflowing at small temperatures (1 / temperature can be large).
        weights = ((vals - vals[:, :1]) / temperature).exp()  # [n, k]
        votes = torch.zeros(len(q), k, num_classes, device=device, dtype=weights.dtype)
        votes.scatter_(2, labels[idx].unsqueeze(2), weights.unsqueeze(2))
        preds.append(votes.sum(dim=1).argmax(dim=1))
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)


def knn_evaluate(
    bank_feats: Tensor,
    bank_labels: Tensor,
    query_feats: Tensor,
    query_labels: Tensor,
    num_classes: int,
    groups: dict[str, list[int]],
    k: int = 200,
    temperature: float = 0.1,
) -> dict:
    """kNN accuracy of the queries, in the probes' format (:func:`sdclr.eval.metrics.summarize`:
    acc, many, medium, few, std, per_class, groups) plus ``k`` (as used, i.e. clipped to the
    bank size) and ``temperature``, so the numbers sit next to the probe results."""
    pred = knn_predict(bank_feats, bank_labels, query_feats, num_classes, k, temperature)
    result = summarize(
        pred.cpu().numpy(), query_labels.cpu().numpy().astype("int64"), num_classes, groups
    )
    result.update(k=min(int(k), len(bank_feats)), temperature=float(temperature))
    return result


def rank_shares(n: int, batch_size: int, world: int) -> list[tuple[int, int]]:
    """``[start, end)`` of each rank's share of ``n`` items: whole batches of
    ``batch_size`` (the last one partial), as evenly as they go, rank 0 first. Rank 0's
    share is empty only when ``n`` is 0."""
    batches = -(-n // batch_size)
    cuts = [min(-(-r * batches // world) * batch_size, n) for r in range(world + 1)]
    return list(zip(cuts[:-1], cuts[1:]))


@torch.no_grad()
def shared_bank_features(
    backbone: nn.Module,
    bank: Images,
    idx: Tensor,
    settings: EvalSettings,
) -> Tensor | None:
    """:func:`sdclr.eval.features.extract_bank_features` of ``bank[idx]`` split over the
    ranks (:func:`rank_shares`): rank 0 gets all the features, the other ranks None. Each
    share is whole batches of the single-process pass, so every image is encoded in the same
    batch as there and the features are the same, bit for bit. A collective under torchrun;
    in one process the plain extraction."""
    world, me = world_size(), rank()
    if world == 1:
        return extract_bank_features(backbone, bank, idx, settings)
    if len(idx) == 0:  # on every rank alike, before any collective
        raise ValueError("no images to extract features from")
    settings = settings.sized_for(bank)
    shares = rank_shares(len(idx), settings.batch_size, world)
    start, end = shares[me]
    mine = extract_bank_features(backbone, bank, idx[start:end], settings) if end > start else None
    # rank 0 always has a share; the ranks without one learn the feature width from it
    width = broadcast_object(int(mine.shape[1]) if me == 0 else None)
    return gather_rows(mine, [e - s for s, e in shares], width, bank.device)


@torch.no_grad()
def knn_monitor(
    backbone: nn.Module,
    bank_images: Tensor | Images,
    bank_labels: Tensor,
    test_images: Tensor | Images,
    test_labels: Tensor,
    settings: EvalSettings,
    k: int = 200,
    temperature: float = 0.1,
    *,
    bank_idx: Tensor | None = None,
) -> dict:
    """kNN accuracy of ``backbone``'s features on uint8 images [N, 3, H, W] or image banks
    (:mod:`sdclr.data.banks`), seen as ``settings`` says (:mod:`sdclr.eval.features`);
    ``bank_idx`` picks the bank's images (default: all).

    Features are taken in eval mode (BN running statistics, as the probes use), and every
    submodule's train/eval flag is put back afterwards, so the monitor can be called in the
    middle of pretraining without disturbing it. Under torchrun every rank must call it: the
    ranks share the encoding (:func:`shared_bank_features`), rank 0 votes, and every rank
    returns its result, the same as one process computes.
    """
    bank, test = as_images(bank_images), as_images(test_images)
    settings = settings.sized_for(bank)
    if bank_idx is None:
        bank_idx = torch.arange(len(bank), device=bank.device)
    test_idx = torch.arange(len(test), device=bank.device)
    with evaluating(backbone):
        feats = [
            shared_bank_features(backbone, b, idx, settings)
            for b, idx in ((bank, bank_idx), (test, test_idx))
        ]
    result = None
    if rank() == 0:
        result = knn_evaluate(
            feats[0],
            bank_labels,
            feats[1],
            test_labels,
            settings.num_classes,
            settings.groups,
            k,
            temperature,
        )
    return broadcast_object(result)
