"""Linear and few-shot probes on a frozen encoder (protocol.md section 2).

The backbone is frozen with BN in eval mode (dense branch, dense statistics); only a new
linear layer is trained: init N(0, 0.01), bias 0, SGD with momentum, step decay at the
milestones. Training images get the pad-4 random crop + flip (CIFAR) or RandomResizedCrop +
flip (ImageNet) every epoch, so their features are recomputed each epoch; validation and test
features (as they are, or Resize + CenterCrop) are computed once. The epoch with the best
validation top-1 is the one whose test accuracy is reported. Images may be resident tensors or
files decoded per batch (:mod:`sdclr.data.banks`).
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from torch import nn

from sdclr.augment.ops import normalize
from sdclr.augment.views import probe_train_view
from sdclr.data.banks import FileImages, TensorImages, as_images
from sdclr.eval.features import EvalSettings, encode, extract_bank_features
from sdclr.eval.metrics import summarize
from sdclr.utils.progress import progress_bar
from sdclr.utils.signals import Interrupted


def probe_rates(cfg) -> list[float]:
    """The learning rates a probe section trains: ``lrs`` (the grid) when given, else ``lr``."""
    grid = cfg.get("lrs") if hasattr(cfg, "get") else getattr(cfg, "lrs", None)
    return [float(r) for r in grid] if grid else [float(cfg.lr)]


@torch.no_grad()
def _accuracy(linear: nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return float((linear(feats).argmax(1) == labels).float().mean()) * 100.0


class _Head:
    """One rate's linear layer and what the probe learned about it: its validation curve
    (None for the epochs after its loss went non-finite), its best epoch and state."""

    def __init__(self, lr: float, linear: nn.Linear):
        self.lr, self.linear = lr, linear
        self.val_curve: list[float | None] = []
        self.best_acc, self.best_epoch, self.best_state = -1.0, 0, None
        self.diverged_epoch: int | None = None

    def record(self, epoch: int, loss: float, val_feats: torch.Tensor, val_labels) -> None:
        if self.diverged_epoch is None and not math.isfinite(loss):
            self.diverged_epoch = epoch
        if self.diverged_epoch is not None:
            self.val_curve.append(None)
            return
        val_acc = _accuracy(self.linear, val_feats, val_labels)
        self.val_curve.append(val_acc)
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch = val_acc, epoch
            self.best_state = copy.deepcopy(self.linear.state_dict())

    def summary(self) -> dict:
        return {
            "lr": self.lr,
            "val_acc": self.val_curve,
            "best_val_acc": self.best_acc if self.best_state is not None else None,
            "best_epoch": self.best_epoch if self.best_state is not None else None,
            "diverged_epoch": self.diverged_epoch,
        }


def train_probe(
    backbone: nn.Module,
    images: torch.Tensor | TensorImages | FileImages,
    labels: torch.Tensor,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    test_images: torch.Tensor | TensorImages | FileImages,
    test_labels: torch.Tensor,
    cfg,
    settings: EvalSettings,
    generator: torch.Generator,
    *,
    crop: str = "pad",
    desc: str = "probe",
    progress: bool = True,
    log=None,
    stop=None,
) -> dict:
    """Train a linear probe, or one per learning rate of the grid ``cfg.lrs`` on the same
    features in the same pass; returns the metrics of :func:`sdclr.eval.metrics.summarize` for
    the head and epoch with the best validation top-1 over rates and epochs, plus ``lr`` (its
    rate), ``best_epoch``, ``best_val_acc``, ``val_acc`` (its curve), ``grid`` (every rate's
    :meth:`_Head.summary`), ``diverged_epoch`` (of the chosen head: the first epoch whose
    training loss was non-finite, or None) and timings.

    ``cfg`` is the probe's section (epochs, batch_size, lr or lrs, momentum, weight_decay,
    milestones, gamma, augment); ``settings`` (:class:`sdclr.eval.features.EvalSettings`)
    gives the classes and groups, the evaluation view and how the frozen backbone runs: its
    ``amp_dtype`` (bf16 on CUDA) applies to the backbone only, the linear layers train in
    float32. ``crop`` is the training augmentation (``pad`` or ``resized``, see
    :mod:`sdclr.augment.views`) at the settings' size. ``stop`` (a
    :class:`sdclr.utils.signals.StopSignal`) raises :class:`sdclr.utils.signals.Interrupted`
    at the end of the epoch it arrives in.

    The heads are disjoint, so summing their losses gives each exactly the gradient it would
    get alone; with one rate (the default) every draw and every step is the single probe's."""
    t0 = time.time()
    bank, test_bank = as_images(images), as_images(test_images)
    settings = settings.sized_for(bank)
    device = bank.device
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    train_idx_t = torch.as_tensor(train_idx, device=device)
    val_idx_t = torch.as_tensor(val_idx, device=device)

    def features(b, idx: torch.Tensor) -> torch.Tensor:
        return extract_bank_features(backbone, b, idx, settings)

    val_feats = features(bank, val_idx_t)
    val_labels = labels[val_idx_t]
    test_feats = features(test_bank, torch.arange(len(test_bank), device=device))
    fixed_train = None
    if not cfg.augment:  # no augmentation: the frozen features never change
        fixed_train = features(bank, train_idx_t)

    heads = []
    for lr in probe_rates(cfg):
        linear = nn.Linear(val_feats.shape[1], settings.num_classes).to(device)
        # drawn from the probe's own generator, not the global RNG: a probe rerun after an
        # interruption starts exactly as the uninterrupted one did
        nn.init.normal_(linear.weight, 0.0, 0.01, generator=generator)
        nn.init.zeros_(linear.bias)
        heads.append(_Head(lr, linear))
    opt = torch.optim.SGD(
        [{"params": list(h.linear.parameters()), "lr": h.lr} for h in heads],
        lr=heads[0].lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    n = len(train_idx_t)
    t_train = time.time()
    bar = progress_bar(range(cfg.epochs), desc=desc, enabled=progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        loss_sums = torch.zeros(len(heads), device=device)
        sels = [perm[s : s + cfg.batch_size] for s in range(0, n, cfg.batch_size)]
        raw = bank.batches([train_idx_t[sel] for sel in sels]) if fixed_train is None else sels
        for sel, x in zip(sels, raw):
            if fixed_train is not None:
                feats = fixed_train[sel]
            else:
                with torch.no_grad():
                    x = probe_train_view(x, crop, settings.size, generator)
                    x = normalize(x, settings.mean, settings.std)
                    feats = encode(backbone, x, settings.amp_dtype)
            target = labels[train_idx_t[sel]]
            losses = [nn.functional.cross_entropy(h.linear(feats), target) for h in heads]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sums += torch.stack([v.detach() for v in losses]) * len(sel)
        sched.step()
        train_losses = [v / n for v in loss_sums.tolist()]  # one host sync per epoch
        for head, train_loss in zip(heads, train_losses):
            head.record(epoch + 1, train_loss, val_feats, val_labels)
        if stop is not None and stop.requested:
            raise Interrupted(
                f"signal received during the {desc} probe (epoch {epoch + 1}); probes restart "
                f"from scratch on resume: run the same command again",
                stop.signum,
            )
        # what the bar and the log show: the rate doing best on validation this epoch
        lead = max(range(len(heads)), key=lambda i: _or_below(heads[i].val_curve[-1]))
        val_acc = heads[lead].val_curve[-1]
        bar.set_postfix(
            loss=f"{train_losses[lead]:.3f}",
            val=f"{val_acc:.2f}" if val_acc is not None else "nan",
            **({"lr": f"{heads[lead].lr:g}"} if len(heads) > 1 else {}),
        )
        if log is not None:
            record = {
                "epoch": epoch + 1,
                "loss": train_losses[lead],
                "val_acc": val_acc,
                "lr": opt.param_groups[lead]["lr"],
            }
            if len(heads) > 1:
                for head, train_loss in zip(heads, train_losses):
                    record[f"grid/{head.lr:g}/loss"] = train_loss
                    record[f"grid/{head.lr:g}/val_acc"] = head.val_curve[-1]
            log(record)
    chosen = _choose(heads)
    if chosen.best_state is not None:
        chosen.linear.load_state_dict(chosen.best_state)
    with torch.no_grad():
        pred = chosen.linear(test_feats).argmax(1).cpu().numpy()
    result = summarize(pred, test_labels.cpu().numpy(), settings.num_classes, settings.groups)
    result.update(
        chosen.summary(),  # lr, val_acc (its curve), best_val_acc, best_epoch, diverged_epoch
        grid=[h.summary() for h in heads],
        train_images=int(n),
        test_images=int(len(test_labels)),
        seconds=time.time() - t0,
        setup_seconds=t_train - t0,  # frozen val/test (and fixed train) features
        train_seconds=time.time() - t_train,
    )
    return result


def _or_below(acc: float | None) -> float:
    return -1.0 if acc is None else acc


def _choose(heads: list[_Head]) -> _Head:
    """The head with the best validation top-1 over rates and epochs (the first rate on a
    tie, as the grid is given); when every head went non-finite before any epoch ended, the
    first, whose test metrics are then those of its non-finite weights."""
    finite = [h for h in heads if h.best_state is not None]
    return max(finite, key=lambda h: h.best_acc) if finite else heads[0]
