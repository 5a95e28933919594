"""Linear and few-shot probes on a frozen encoder (protocol.md section 2).

The backbone is frozen with BN in eval mode (dense branch, dense statistics); only a new
linear layer is trained: init N(0, 0.01), bias 0, SGD with momentum, step decay at the
milestones. The reference steps its MultiStepLR at the start of each 1-based epoch for CIFAR
(``lr_step: epoch_start``: lr 30 for epochs 1-9 of the full-shot probe) and at the end for
ImageNet (``epoch_end``: 1-10), so the schedule's position is a setting. Training images get
the pad-4 random crop + flip (CIFAR) or RandomResizedCrop + flip (ImageNet) every epoch, so
their features are recomputed each epoch; validation and test features (as they are, or
Resize + CenterCrop) are computed once. Validation runs every ``val_every`` epochs and after
the last; the validated epoch with the best ``select_metric`` (validation top-1, or top-5 as
the reference's ImageNet probe) is the one whose test accuracy is reported. ``normalize``
puts an affine-free BatchNorm before the linear layer (MAE's linear probe; off in the
protocol). Images may be resident tensors or files decoded per batch
(:mod:`sdclr.data.banks`).
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import numpy as np
import torch
from torch import nn

from sdclr.augment.ops import normalize
from sdclr.augment.views import probe_train_view
from sdclr.data.banks import FileImages, TensorImages, as_images
from sdclr.eval.features import EvalSettings, encode, extract_bank_features
from sdclr.eval.metrics import summarize
from sdclr.utils.progress import EpochLines, progress_bar
from sdclr.utils.signals import Interrupted


def probe_rates(cfg) -> list[float]:
    """The learning rates a probe section trains: ``lrs`` (the grid) when given, else ``lr``."""
    grid = cfg.get("lrs") if hasattr(cfg, "get") else getattr(cfg, "lrs", None)
    return [float(r) for r in grid] if grid else [float(cfg.lr)]


#: Where the probe steps its MultiStepLR: ``epoch_start`` (the reference's train_cifar.py,
#: the old-PyTorch order: epoch e trains at lr x gamma^(milestones <= e)) or ``epoch_end``
#: (its train_imagenet.py: milestones <= e - 1).
LR_STEPS = ("epoch_start", "epoch_end")
#: The validation accuracy that selects the reported epoch (and rate).
SELECT_METRICS = ("top1", "top5")


class ProbeSchedule:
    """The probe's learning rates: a MultiStepLR over ``opt`` stepped where ``lr_step``
    says. Call :meth:`begin_epoch` before an epoch's first step and :meth:`end_epoch` after
    its last; :meth:`rates` between them are the epoch's rates, one per parameter group."""

    def __init__(self, opt: torch.optim.Optimizer, milestones, gamma: float, lr_step: str):
        if lr_step not in LR_STEPS:
            raise ValueError(f"lr_step must be one of {LR_STEPS}, got {lr_step!r}")
        self.opt, self.at_start = opt, lr_step == "epoch_start"
        self.sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(milestones), gamma)

    def begin_epoch(self) -> None:
        if self.at_start:
            with warnings.catch_warnings():  # the reference's order, on purpose
                warnings.filterwarnings("ignore", r"Detected call of `lr_scheduler\.step\(\)`")
                self.sched.step()

    def end_epoch(self) -> None:
        if not self.at_start:
            self.sched.step()

    def rates(self) -> list[float]:
        return [float(g["lr"]) for g in self.opt.param_groups]


@torch.no_grad()
def _accuracies(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(top-1, top-5) in %; top-5 is top-k over all classes when there are fewer than 5."""
    top = logits.topk(min(5, logits.shape[1]), dim=1).indices
    hit = top == labels[:, None]
    return float(hit[:, 0].float().mean()) * 100.0, float(hit.any(1).float().mean()) * 100.0


def _norms(feats: torch.Tensor) -> torch.Tensor:
    """Each row's L2 norm, in float64: a runaway scale's squares overflow float32."""
    return torch.linalg.vector_norm(feats, dim=1, dtype=torch.float64)


def _norm_stats(norms: torch.Tensor) -> dict:
    """Mean, population std, min and max of feature L2 norms (None where not finite)."""
    n = norms.double()
    stats = torch.stack([n.mean(), n.std(unbiased=False), n.min(), n.max()]).tolist()
    out = {
        k: (v if math.isfinite(v) else None) for k, v in zip(("mean", "std", "min", "max"), stats)
    }
    return {**out, "images": int(n.numel())}


class _Head:
    """One rate's linear layer (after the probe's shared affine-free BatchNorm ``norm``, if
    any) and what the probe learned about it: its validation top-1 and top-5 at the validated
    epochs (None once its loss went non-finite), its best epoch by the selection metric and
    the state of that epoch (the linear layer's, and ``norm``'s running statistics)."""

    def __init__(self, lr: float, linear: nn.Linear, norm: nn.BatchNorm1d | None, metric: str):
        self.lr, self.linear, self.norm, self.metric = lr, linear, norm, metric
        self.val_epochs: list[int] = []
        self.val_curve: list[float | None] = []
        self.val_top5: list[float | None] = []
        self.best_score, self.best_epoch, self.best_state = -1.0, 0, None
        self.best_top1: float | None = None
        self.best_top5: float | None = None
        self.diverged_epoch: int | None = None

    def note_loss(self, epoch: int, loss: float) -> None:
        if self.diverged_epoch is None and not math.isfinite(loss):
            self.diverged_epoch = epoch

    @torch.no_grad()
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Evaluation logits (``norm`` in eval mode, its running statistics)."""
        if self.norm is not None:
            self.norm.eval()
            feats = self.norm(feats)
        return self.linear(feats)

    def validate(self, epoch: int, val_feats: torch.Tensor, val_labels: torch.Tensor) -> None:
        self.val_epochs.append(epoch)
        if self.diverged_epoch is not None:
            self.val_curve.append(None)
            self.val_top5.append(None)
            return
        top1, top5 = _accuracies(self.logits(val_feats), val_labels)
        self.val_curve.append(top1)
        self.val_top5.append(top5)
        score = top1 if self.metric == "top1" else top5
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_top1, self.best_top5 = top1, top5
            self.best_state = {
                "linear": copy.deepcopy(self.linear.state_dict()),
                "norm": copy.deepcopy(self.norm.state_dict()) if self.norm is not None else None,
            }

    def restore_best(self) -> None:
        if self.best_state is None:
            return
        self.linear.load_state_dict(self.best_state["linear"])
        if self.norm is not None:
            self.norm.load_state_dict(self.best_state["norm"])

    def summary(self) -> dict:
        found = self.best_state is not None
        return {
            "lr": self.lr,
            "val_epochs": self.val_epochs,
            "val_acc": self.val_curve,
            "val_top5": self.val_top5,
            "best_val_acc": self.best_top1 if found else None,
            "best_val_top5": self.best_top5 if found else None,
            "best_epoch": self.best_epoch if found else None,
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
    the head and validated epoch with the best ``cfg.select_metric`` over rates and epochs,
    plus ``select_metric``, ``lr`` (its rate), ``best_epoch``, ``best_val_acc`` and
    ``best_val_top5`` (its validation top-1 and top-5), ``val_epochs`` (the validated
    epochs), ``val_acc`` and ``val_top5`` (its curves there), ``grid`` (every rate's
    :meth:`_Head.summary`), ``diverged_epoch`` (of the chosen head: the first epoch whose
    training loss was non-finite, or None), ``feature_norm`` (mean, std, min and max of the
    L2 norms of the training features of the first epoch and of the validation features,
    before ``normalize``), the schedule settings and timings.

    ``cfg`` is the probe's section (epochs, batch_size, lr or lrs, momentum, weight_decay,
    milestones, gamma, lr_step, val_every, select_metric, normalize, augment); ``settings``
    (:class:`sdclr.eval.features.EvalSettings`) gives the classes and groups, the evaluation
    view and how the frozen backbone runs: its ``amp_dtype`` (bf16 on CUDA) applies to the
    backbone only, the linear layers train in float32. ``crop`` is the training augmentation
    (``pad`` or ``resized``, see :mod:`sdclr.augment.views`) at the settings' size. ``stop`` (a
    :class:`sdclr.utils.signals.StopSignal`) raises :class:`sdclr.utils.signals.Interrupted`
    at the end of the epoch it arrives in.

    The heads are disjoint, so summing their losses gives each exactly the gradient it would
    get alone; with one rate (the default) every draw and every step is the single probe's.
    With ``normalize`` the heads share one affine-free BatchNorm (no parameters: it updates
    its running statistics once per batch, in training mode; a batch of one image is
    normalised by them)."""
    lr_step, metric = str(cfg.lr_step), str(cfg.select_metric)
    val_every, normalize_feats = int(cfg.val_every), bool(cfg.normalize)
    if metric not in SELECT_METRICS:
        raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {metric!r}")
    if val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {val_every}")
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

    dim = val_feats.shape[1]
    # no parameters, so nothing of the optimiser's and no draw: normalize=false is unchanged
    norm = nn.BatchNorm1d(dim, eps=1e-6, affine=False).to(device) if normalize_feats else None
    heads = []
    for lr in probe_rates(cfg):
        linear = nn.Linear(dim, settings.num_classes).to(device)
        # drawn from the probe's own generator, not the global RNG: a probe rerun after an
        # interruption starts exactly as the uninterrupted one did
        nn.init.normal_(linear.weight, 0.0, 0.01, generator=generator)
        nn.init.zeros_(linear.bias)
        heads.append(_Head(lr, linear, norm, metric))
    opt = torch.optim.SGD(
        [{"params": list(h.linear.parameters()), "lr": h.lr} for h in heads],
        lr=heads[0].lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    sched = ProbeSchedule(opt, cfg.milestones, cfg.gamma, lr_step)
    n = len(train_idx_t)
    train_norms: list[torch.Tensor] = []  # the first epoch's training feature norms
    t_train = time.time()
    bar = progress_bar(range(cfg.epochs), desc=desc, enabled=progress)
    lines = EpochLines(desc, cfg.epochs, enabled=progress)  # without a terminal: the bar's lines
    for epoch in bar:
        t_epoch = time.time()
        sched.begin_epoch()
        rates = sched.rates()  # what this epoch trains at
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
            if epoch == 0:
                train_norms.append(_norms(feats.detach()))
            if norm is not None:
                with torch.no_grad():
                    norm.train(len(sel) > 1)  # batch statistics need two samples
                    feats = norm(feats)
            target = labels[train_idx_t[sel]]
            losses = [nn.functional.cross_entropy(h.linear(feats), target) for h in heads]
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sums += torch.stack([v.detach() for v in losses]) * len(sel)
        sched.end_epoch()
        train_losses = [v / n for v in loss_sums.tolist()]  # one host sync per epoch
        train_seconds = time.time() - t_epoch
        # the reference validates every test_freq epochs and after the last
        validated = (epoch + 1) % val_every == 0 or epoch + 1 == cfg.epochs
        for head, train_loss in zip(heads, train_losses):
            head.note_loss(epoch + 1, train_loss)
            if validated:
                head.validate(epoch + 1, val_feats, val_labels)
        if stop is not None and stop.requested:
            raise Interrupted(
                f"signal received during the {desc} probe (epoch {epoch + 1}); probes restart "
                f"from scratch on resume: run the same command again",
                stop.signum,
            )
        # what the bar and the log show: the rate doing best on the selection metric at the
        # last validation (the first rate until then)
        lead = max(range(len(heads)), key=lambda i: _last_score(heads[i]))
        val_acc = heads[lead].val_curve[-1] if validated else None
        bar.set_postfix(
            loss=f"{train_losses[lead]:.3f}",
            val=f"{val_acc:.2f}" if val_acc is not None else ("nan" if validated else "-"),
            **({"lr": f"{heads[lead].lr:g}"} if len(heads) > 1 else {}),
        )
        lines(epoch + 1, n, train_seconds, loss=train_losses[lead], val=val_acc, lr=rates[lead])
        if log is not None:
            record = {"epoch": epoch + 1, "loss": train_losses[lead], "lr": rates[lead]}
            if validated:
                record["val_acc"] = val_acc
                record["val_top5"] = heads[lead].val_top5[-1]
            if len(heads) > 1:
                for head, train_loss in zip(heads, train_losses):
                    record[f"grid/{head.lr:g}/loss"] = train_loss
                    if validated:
                        record[f"grid/{head.lr:g}/val_acc"] = head.val_curve[-1]
            log(record)
    chosen = _choose(heads)
    chosen.restore_best()
    pred = chosen.logits(test_feats).argmax(1).cpu().numpy()
    result = summarize(pred, test_labels.cpu().numpy(), settings.num_classes, settings.groups)
    result.update(
        select_metric=metric,
        **chosen.summary(),  # lr, val_epochs, val_acc/val_top5 (its curves), best_val_acc,
        # best_val_top5, best_epoch, diverged_epoch
        grid=[h.summary() for h in heads],
        lr_step=lr_step,
        val_every=val_every,
        normalize=normalize_feats,
        feature_norm={
            "train": _norm_stats(torch.cat(train_norms)) if train_norms else None,
            "val": _norm_stats(_norms(val_feats)) if len(val_feats) else None,
        },
        train_images=int(n),
        test_images=int(len(test_labels)),
        seconds=time.time() - t0,
        setup_seconds=t_train - t0,  # frozen val/test (and fixed train) features
        train_seconds=time.time() - t_train,
    )
    return result


def _last_score(head: _Head) -> float:
    """The head's selection metric at its last validation (-1: none yet, or non-finite)."""
    curve = head.val_curve if head.metric == "top1" else head.val_top5
    return -1.0 if not curve or curve[-1] is None else curve[-1]


def _choose(heads: list[_Head]) -> _Head:
    """The head with the best validation score (``select_metric``) over rates and validated
    epochs (the first rate on a tie, as the grid is given); when every head went non-finite
    before its first validation, the first, whose test metrics are then those of its
    non-finite weights."""
    finite = [h for h in heads if h.best_state is not None]
    return max(finite, key=lambda h: h.best_score) if finite else heads[0]
