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


@torch.no_grad()
def _accuracy(linear: nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> float:
    return float((linear(feats).argmax(1) == labels).float().mean()) * 100.0


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
    """Train a linear probe; returns the metrics of :func:`sdclr.eval.metrics.summarize` plus
    ``best_epoch``, ``val_acc`` (per epoch) and ``seconds``.

    ``cfg`` is the probe's section (epochs, batch_size, lr, momentum, weight_decay, milestones,
    gamma, augment); ``settings`` (:class:`sdclr.eval.features.EvalSettings`) gives the
    classes and groups, the evaluation view and how the frozen backbone runs: its
    ``amp_dtype`` (bf16 on CUDA) applies to the backbone only, the linear layer trains in
    float32. ``crop`` is the training augmentation (``pad`` or ``resized``, see
    :mod:`sdclr.augment.views`) at the settings' size. ``stop`` (a
    :class:`sdclr.utils.signals.StopSignal`) raises :class:`sdclr.utils.signals.Interrupted`
    at the end of the epoch it arrives in."""
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

    linear = nn.Linear(val_feats.shape[1], settings.num_classes).to(device)
    # drawn from the probe's own generator, not the global RNG: a probe rerun after an
    # interruption starts exactly as the uninterrupted one did
    nn.init.normal_(linear.weight, 0.0, 0.01, generator=generator)
    nn.init.zeros_(linear.bias)
    opt = torch.optim.SGD(
        linear.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma)
    n = len(train_idx_t)
    best_acc, best_epoch, best_state, val_curve = -1.0, 0, None, []
    t_train = time.time()
    bar = progress_bar(range(cfg.epochs), desc=desc, enabled=progress)
    for epoch in bar:
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        loss_sum = torch.zeros((), device=device)
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
            loss = nn.functional.cross_entropy(linear(feats), labels[train_idx_t[sel]])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach() * len(sel)
        sched.step()
        val_acc = _accuracy(linear, val_feats, val_labels)
        val_curve.append(val_acc)
        if val_acc > best_acc:
            best_acc, best_epoch, best_state = (
                val_acc,
                epoch + 1,
                copy.deepcopy(linear.state_dict()),
            )
        if stop is not None and stop.requested:
            raise Interrupted(
                f"signal received during the {desc} probe (epoch {epoch + 1}); probes restart "
                f"from scratch on resume: run the same command again",
                stop.signum,
            )
        train_loss = float(loss_sum) / n
        bar.set_postfix(loss=f"{train_loss:.3f}", val=f"{val_acc:.2f}")
        if log is not None:
            log(
                {
                    "epoch": epoch + 1,
                    "loss": train_loss,
                    "val_acc": val_acc,
                    "lr": opt.param_groups[0]["lr"],
                }
            )
    linear.load_state_dict(best_state)
    with torch.no_grad():
        pred = linear(test_feats).argmax(1).cpu().numpy()
    result = summarize(pred, test_labels.cpu().numpy(), settings.num_classes, settings.groups)
    result.update(
        best_epoch=best_epoch,
        best_val_acc=best_acc,
        val_acc=val_curve,
        train_images=int(n),
        seconds=time.time() - t0,
        setup_seconds=t_train - t0,  # frozen val/test (and fixed train) features
        train_seconds=time.time() - t_train,
    )
    return result
