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
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from sdclr.augment.ops import normalize
from sdclr.augment.views import probe_train_view
from sdclr.data.banks import Images, as_images
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


@dataclass(frozen=True)
class ProbeData:
    """What a probe learns from and is scored on: the image bank ``images`` with its
    ``labels`` (on its device), the positions in it of the training set (``train_idx``: the
    pool, or S_b for the few-shot probe) and of the validation set that picks the epoch and
    rate (``val_idx``), and the test bank ``test_images`` with ``test_labels``, all of which is
    scored."""

    images: Images
    labels: torch.Tensor
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_images: Images
    test_labels: torch.Tensor

    @classmethod
    def of(
        cls,
        images: torch.Tensor | Images,
        labels: torch.Tensor,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        test_images: torch.Tensor | Images,
        test_labels: torch.Tensor,
    ) -> ProbeData:
        """The probe's data where the images may also be uint8 ``[N, 3, H, W]`` tensors."""
        return cls(
            as_images(images), labels, train_idx, val_idx, as_images(test_images), test_labels
        )


def fit_probe(
    backbone: nn.Module,
    data: ProbeData,
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
    """Train a linear probe of ``backbone`` on ``data``, or one per learning rate of the grid
    ``cfg.lrs`` on the same features in the same pass; returns the metrics of
    :func:`sdclr.eval.metrics.summarize` for the head and validated epoch with the best
    ``cfg.select_metric`` over rates and epochs, plus ``select_metric``, ``lr`` (its rate),
    ``best_epoch``, ``best_val_acc`` and ``best_val_top5`` (its validation top-1 and top-5),
    ``val_epochs`` (the validated epochs), ``val_acc`` and ``val_top5`` (its curves there),
    ``grid`` (every rate's :meth:`_Head.summary`), ``diverged_epoch`` (of the chosen head: the
    first epoch whose training loss was non-finite, or None), ``feature_norm`` (mean, std, min
    and max of the L2 norms of the training features of the first epoch and of the validation
    features, before ``normalize``), the schedule settings and timings.

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
    _check_section(cfg)
    t0 = time.time()
    probe = _Probe(backbone, data, cfg, settings.sized_for(data.images), generator, crop)
    t_train = time.time()
    shown = _EpochReport(desc, int(cfg.epochs), progress, log)
    for epoch in shown.bar:
        t_epoch = time.time()
        probe.sched.begin_epoch()
        rates = probe.sched.rates()  # what this epoch trains at
        train_losses = probe.train_epoch(epoch)
        probe.sched.end_epoch()
        train_seconds = time.time() - t_epoch
        validated = probe.validate(epoch + 1, train_losses)
        if stop is not None and stop.requested:
            raise Interrupted(
                f"signal received during the {desc} probe (epoch {epoch + 1}); probes restart "
                f"from scratch on resume: run the same command again",
                stop.signum,
            )
        shown(epoch + 1, probe, train_losses, rates, validated, train_seconds)
    result = probe.evaluate()
    result.update(
        seconds=time.time() - t0,
        setup_seconds=t_train - t0,  # frozen val/test (and fixed train) features
        train_seconds=time.time() - t_train,
    )
    return result


def _check_section(cfg) -> None:
    metric, val_every = str(cfg.select_metric), int(cfg.val_every)
    if metric not in SELECT_METRICS:
        raise ValueError(f"select_metric must be one of {SELECT_METRICS}, got {metric!r}")
    if val_every < 1:
        raise ValueError(f"val_every must be >= 1, got {val_every}")


class _Probe:
    """A probe in training: the frozen backbone, the validation and test features (computed
    once, and the training features too when they never change), one head per rate with
    their optimiser and schedule, and the first epoch's training feature norms."""

    def __init__(
        self,
        backbone: nn.Module,
        data: ProbeData,
        cfg,
        settings: EvalSettings,
        generator: torch.Generator,
        crop: str,
    ):
        self.backbone, self.data, self.cfg, self.settings = backbone, data, cfg, settings
        self.generator, self.crop = generator, crop
        device = data.images.device
        backbone.eval()
        for p in backbone.parameters():
            p.requires_grad_(False)
        self.train_idx = torch.as_tensor(data.train_idx, device=device)
        val_idx = torch.as_tensor(data.val_idx, device=device)
        self.val_feats = self.features(data.images, val_idx)
        self.val_labels = data.labels[val_idx]
        test_idx = torch.arange(len(data.test_images), device=device)
        self.test_feats = self.features(data.test_images, test_idx)
        self.fixed_train = None
        if not cfg.augment:  # no augmentation: the frozen features never change
            self.fixed_train = self.features(data.images, self.train_idx)
        dim = self.val_feats.shape[1]
        # no parameters, so nothing of the optimiser's and no draw: normalize=false is unchanged
        self.norm = (
            nn.BatchNorm1d(dim, eps=1e-6, affine=False).to(device) if cfg.normalize else None
        )
        self.heads = [self._head(lr, dim, device) for lr in probe_rates(cfg)]
        self.opt = torch.optim.SGD(
            [{"params": list(h.linear.parameters()), "lr": h.lr} for h in self.heads],
            lr=self.heads[0].lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
        )
        self.sched = ProbeSchedule(self.opt, cfg.milestones, cfg.gamma, str(cfg.lr_step))
        self.train_norms: list[torch.Tensor] = []  # the first epoch's training feature norms

    def features(self, bank: Images, idx: torch.Tensor) -> torch.Tensor:
        return extract_bank_features(self.backbone, bank, idx, self.settings)

    def _head(self, lr: float, dim: int, device: torch.device) -> _Head:
        linear = nn.Linear(dim, self.settings.num_classes).to(device)
        # drawn from the probe's own generator, not the global RNG: a probe rerun after an
        # interruption starts exactly as the uninterrupted one did
        nn.init.normal_(linear.weight, 0.0, 0.01, generator=self.generator)
        nn.init.zeros_(linear.bias)
        return _Head(lr, linear, self.norm, str(self.cfg.select_metric))

    def train_epoch(self, epoch: int) -> list[float]:
        """One epoch (0-based) over the training set in a fresh order; each head's mean
        training loss."""
        gen, batch_size, n = self.generator, self.cfg.batch_size, len(self.train_idx)
        perm = torch.randperm(n, generator=gen, device=gen.device).to(self.train_idx.device)
        loss_sums = torch.zeros(len(self.heads), device=self.train_idx.device)
        sels = [perm[s : s + batch_size] for s in range(0, n, batch_size)]
        if self.fixed_train is None:
            raw = self.data.images.batches([self.train_idx[sel] for sel in sels])
        else:
            raw = sels
        for sel, x in zip(sels, raw):
            feats = self._train_features(sel, x)
            if epoch == 0:
                self.train_norms.append(_norms(feats.detach()))
            loss_sums += self._step(feats, self.data.labels[self.train_idx[sel]]) * len(sel)
        return [v / n for v in loss_sums.tolist()]  # one host sync per epoch

    def _train_features(self, sel: torch.Tensor, x) -> torch.Tensor:
        """The frozen features of the training batch ``sel`` (its images ``x``): fixed, or of
        a fresh augmented view."""
        if self.fixed_train is not None:
            return self.fixed_train[sel]
        s = self.settings
        with torch.no_grad():
            x = probe_train_view(x, self.crop, s.size, self.generator)
            return encode(self.backbone, normalize(x, s.mean, s.std), s.amp_dtype)

    def _step(self, feats: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One SGD step of every head on ``feats``; their losses, detached."""
        if self.norm is not None:
            with torch.no_grad():
                self.norm.train(len(feats) > 1)  # batch statistics need two samples
                feats = self.norm(feats)
        losses = [nn.functional.cross_entropy(h.linear(feats), target) for h in self.heads]
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return torch.stack([v.detach() for v in losses])

    def validate(self, epoch: int, train_losses: list[float]) -> bool:
        """Note each head's training loss of ``epoch`` (1-based) and, on a validation epoch,
        score it on the validation set; whether it was one."""
        # the reference validates every test_freq epochs and after the last
        validated = epoch % int(self.cfg.val_every) == 0 or epoch == self.cfg.epochs
        for head, train_loss in zip(self.heads, train_losses):
            head.note_loss(epoch, train_loss)
            if validated:
                head.validate(epoch, self.val_feats, self.val_labels)
        return validated

    def evaluate(self) -> dict:
        """The chosen head (:func:`_choose`) at its best epoch on the test set, and what the
        probe learned on the way."""
        cfg, s = self.cfg, self.settings
        chosen = _choose(self.heads)
        chosen.restore_best()
        pred = chosen.logits(self.test_feats).argmax(1).cpu().numpy()
        result = summarize(pred, self.data.test_labels.cpu().numpy(), s.num_classes, s.groups)
        result.update(
            select_metric=str(cfg.select_metric),
            **chosen.summary(),  # lr, val_epochs, val_acc/val_top5 (its curves), best_val_acc,
            # best_val_top5, best_epoch, diverged_epoch
            grid=[h.summary() for h in self.heads],
            lr_step=str(cfg.lr_step),
            val_every=int(cfg.val_every),
            normalize=bool(cfg.normalize),
            feature_norm={
                "train": _norm_stats(torch.cat(self.train_norms)) if self.train_norms else None,
                "val": _norm_stats(_norms(self.val_feats)) if len(self.val_feats) else None,
            },
            train_images=int(len(self.train_idx)),
            test_images=int(len(self.data.test_labels)),
        )
        return result


class _EpochReport:
    """What the probe shows and logs after each epoch: the progress bar (iterated over the
    epochs), the epoch lines (without a terminal: the bar's lines) and the ``log`` record."""

    def __init__(self, desc: str, epochs: int, progress: bool, log):
        self.bar = progress_bar(range(epochs), desc=desc, enabled=progress)
        self.lines = EpochLines(desc, epochs, enabled=progress)
        self.log = log

    def __call__(
        self,
        epoch: int,
        probe: _Probe,
        train_losses: list[float],
        rates: list[float],
        validated: bool,
        seconds: float,
    ) -> None:
        heads = probe.heads
        # the rate doing best on the selection metric at the last validation (the first
        # rate until then)
        lead = max(range(len(heads)), key=lambda i: _last_score(heads[i]))
        val_acc = heads[lead].val_curve[-1] if validated else None
        self.bar.set_postfix(
            loss=f"{train_losses[lead]:.3f}",
            val=f"{val_acc:.2f}" if val_acc is not None else ("nan" if validated else "-"),
            **({"lr": f"{heads[lead].lr:g}"} if len(heads) > 1 else {}),
        )
        n = len(probe.train_idx)
        self.lines(epoch, n, seconds, loss=train_losses[lead], val=val_acc, lr=rates[lead])
        if self.log is None:
            return
        record = {"epoch": epoch, "loss": train_losses[lead], "lr": rates[lead]}
        if validated:
            record["val_acc"] = val_acc
            record["val_top5"] = heads[lead].val_top5[-1]
        if len(heads) > 1:
            for head, train_loss in zip(heads, train_losses):
                record[f"grid/{head.lr:g}/loss"] = train_loss
                if validated:
                    record[f"grid/{head.lr:g}/val_acc"] = head.val_curve[-1]
        self.log(record)


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
