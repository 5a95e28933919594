"""What pretraining measures without changing it: the online kNN monitor and the SDCLR
diagnostics. Both run in eval mode on evaluation views (no augmentation, no random draw),
put every module's train / eval flag back afterwards and never touch BN statistics, so a run
with them computes the same weights as one without.

* :class:`KnnMonitor`: weighted kNN (k 200, t 0.1; :func:`sdclr.eval.knn.knn_monitor`) of the
  dense backbone's features, the probe pool as the bank and the test set as queries, every
  ``monitor.knn_every`` epochs: accuracy and Many / Medium / Few, a learning curve without
  the probes.
* :class:`Diagnostics`: every ``monitor.diagnostics_every`` epochs, on a fixed
  class-stratified sample of the pretraining set (the first ``per_class`` images of each class
  in the set's order): per class the mean disagreement ``1 - cos(z_dense, z_pruned)`` between
  the dense branch and the pruned branch (branch 1 with the current mask) on the same images;
  each class's share of the contrastive loss, summed over **the training steps of the epoch**
  (per-sample losses of the real augmented batches, accumulated on the device by class; the
  mean loss per class comes with it); and the density of the current mask per conv layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sdclr.data.banks import Images
from sdclr.eval.features import EvalSettings
from sdclr.eval.knn import knn_monitor
from sdclr.models.contrastive import evaluating
from sdclr.utils.precision import autocast, input_dtype, owned_upcast

GROUPS = ("many", "medium", "few")


def stratified_sample(labels: np.ndarray, num_classes: int, per_class: int) -> np.ndarray:
    """Positions of the first ``per_class`` items of every class (fewer when the class has
    fewer), in position order: a fixed sample that needs no random draw."""
    labels = np.asarray(labels)
    picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
    out = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    return np.sort(out).astype(np.int64)


def default_per_class(num_classes: int) -> int:
    """About 640 images in all, at least 8 per class: 64 for 10 classes, 8 for 100."""
    return max(8, 640 // max(num_classes, 1))


class KnnMonitor:
    def __init__(
        self,
        every: int,
        bank: Images,
        bank_idx: torch.Tensor,
        bank_labels: torch.Tensor,
        test: Images,
        test_labels: torch.Tensor,
        settings: EvalSettings,
        k: int = 200,
        temperature: float = 0.1,
    ):
        self.every = int(every)
        self.bank, self.bank_idx, self.bank_labels = bank, bank_idx, bank_labels
        self.test, self.test_labels = test, test_labels
        self.settings = settings
        self.k, self.temperature = k, temperature

    def due(self, epochs_done: int) -> bool:
        return self.every > 0 and epochs_done % self.every == 0

    def __call__(self, backbone: nn.Module) -> dict[str, Any]:
        """kNN accuracy of ``backbone``'s features: acc, many, medium, few, std, k."""
        r = knn_monitor(
            backbone,
            self.bank,
            self.bank_labels,
            self.test,
            self.test_labels,
            self.settings,
            self.k,
            self.temperature,
            bank_idx=self.bank_idx,
        )
        return {key: r[key] for key in ("acc", "many", "medium", "few", "std", "k")}


class Diagnostics:
    def __init__(
        self,
        every: int,
        bank: Images,
        sample: torch.Tensor,
        labels: torch.Tensor,
        settings: EvalSettings,
    ):
        """``bank``: the pretraining set; ``labels``: its labels [N] on the training device;
        ``sample``: positions in it of the fixed diagnostic sample."""
        self.every = int(every)
        self.bank, self.sample, self.labels = bank, sample, labels
        self.settings = settings
        num_classes = settings.num_classes
        device = labels.device
        self.loss_sum = torch.zeros(num_classes, device=device, dtype=torch.float64)
        self.count = torch.zeros(num_classes, device=device, dtype=torch.float64)

    def due(self, epochs_done: int) -> bool:
        return epochs_done % self.every == 0

    # --- the loss share, from the training steps ----------------------------------------
    def reset_epoch(self) -> None:
        self.loss_sum.zero_()
        self.count.zero_()

    def add_losses(self, idx: torch.Tensor, losses: torch.Tensor) -> None:
        """Per-sample losses of a step's samples (positions ``idx``), on the device."""
        lab = self.labels[idx]
        self.loss_sum.index_add_(0, lab, losses.detach().to(self.loss_sum.dtype))
        ones = torch.ones(lab.shape, dtype=self.count.dtype, device=lab.device)
        self.count.index_add_(0, lab, ones)

    def epoch_state(self) -> dict[str, torch.Tensor]:
        return {"loss_sum": self.loss_sum.cpu(), "count": self.count.cpu()}

    def load_epoch_state(self, state: dict[str, torch.Tensor]) -> None:
        self.loss_sum.copy_(state["loss_sum"])
        self.count.copy_(state["count"])

    # --- the evaluation pass ------------------------------------------------------------
    @torch.no_grad()
    def features(self, model: nn.Module, method: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Projections [S, d] of the sample through the dense branch and, with a pruned
        branch, through it (BN copy 1 with dual BN, the current mask); eval mode."""
        branch = 1 if method.dual_bn else 0
        pruned = bool(method.pruned) and method.masks is not None
        dense, sparse = [], []
        e = self.settings.sized_for(self.bank)
        chunks = [
            self.sample[s : s + e.batch_size] for s in range(0, len(self.sample), e.batch_size)
        ]
        dtype = input_dtype(model)
        with evaluating(model):
            for x in self.bank.batches(chunks):
                v = e.view(x).to(dtype)
                with autocast(v.device.type, e.amp_dtype):
                    # copies: CUDA graphs overwrite a compiled model's output at its next call
                    dense.append(owned_upcast(model(v, branch=0)))
                    if pruned:
                        sparse.append(owned_upcast(model(v, branch=branch, masks=method.masks)))
        return torch.cat(dense), (torch.cat(sparse) if pruned else None)

    def _per_class_mean(self, values: torch.Tensor, labels: torch.Tensor) -> list[float | None]:
        c = self.settings.num_classes
        total = torch.zeros(c, dtype=torch.float64, device=values.device)
        n = torch.zeros(c, dtype=torch.float64, device=values.device)
        total.index_add_(0, labels, values.double())
        n.index_add_(0, labels, torch.ones_like(values, dtype=torch.float64))
        return _nan_to_none((total / n).cpu().numpy())

    def __call__(self, model: nn.Module, method: Any, epoch: int) -> dict[str, Any]:
        """The diagnostics record of ``epoch`` (1-based, finished)."""
        sample_labels = self.labels[self.sample]
        out: dict[str, Any] = {"epoch": int(epoch)}
        z_dense, z_pruned = self.features(model, method)
        if z_pruned is not None:
            dis = 1.0 - F.cosine_similarity(z_dense, z_pruned, dim=1)
            out["disagreement"] = self._per_class_mean(dis, sample_labels)
        else:
            out["disagreement"] = None
        loss_sum, count = self.loss_sum.cpu().numpy(), self.count.cpu().numpy()
        total = loss_sum.sum()
        with np.errstate(invalid="ignore", divide="ignore"):
            share = loss_sum / total if total > 0 else np.full_like(loss_sum, np.nan)
            mean = np.where(count > 0, loss_sum / count, np.nan)
        out["loss_share"] = _nan_to_none(share) if count.sum() > 0 else None
        out["loss_mean"] = _nan_to_none(mean) if count.sum() > 0 else None
        out["sample_counts"] = np.bincount(
            sample_labels.cpu().numpy(), minlength=self.settings.num_classes
        ).tolist()
        out["layer_density"] = layer_density(method.masks) if method.masks else None
        # group summaries (scalars: these reach W&B)
        for g in GROUPS:
            classes = self.settings.groups.get(g, [])
            if out["disagreement"] is not None:
                vals = [out["disagreement"][c] for c in classes]
                vals = [v for v in vals if v is not None]
                out[f"disagreement_{g}"] = float(np.mean(vals)) if vals else None
            if out["loss_share"] is not None:
                vals = [out["loss_share"][c] for c in classes]
                out[f"loss_share_{g}"] = float(sum(v for v in vals if v is not None))
        return out


def layer_density(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Kept fraction of each conv layer's weights under the mask (one host sync)."""
    names = list(masks)
    values = torch.stack([masks[n].float().mean() for n in names]).cpu().tolist()
    return dict(zip(names, values))


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, dtype=float)]


class TrainingMonitor:
    """What :func:`sdclr.train.loop.pretrain` measures: either part may be None."""

    def __init__(self, knn: KnnMonitor | None = None, diagnostics: Diagnostics | None = None):
        self.knn = knn
        self.diagnostics = diagnostics
