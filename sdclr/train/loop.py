"""The pretraining loop: a plain loop over GPU- (or CPU-) resident uint8 images.

Batches are index gathers into the resident dataset; both views are drawn with the batched
augmentation ops from one seeded generator. The loss is accumulated on the device and read
only every ``log_every`` steps, so the step itself never waits on the host.

Any method object of :mod:`sdclr.methods.simclr` (SimCLR / SDCLR, MoCo v2, BYOL, each with
or without a pruned branch) trains here: its extra parameters join the optimiser,
``after_step`` runs after every optimiser step and ``set_progress`` before every loss. At
every epoch start the mask is recomputed and the temperature set (constant, or
``temperature.schedule=cosine``);
with ``boost=true`` (BCL) the per-sample losses of every step update a loss memory indexed by
dataset position, turned into per-sample strengths at the next epoch start (0 in the first
epoch) that drive the boosted augmentation of both views. The kNN monitor and the
diagnostics (:mod:`sdclr.eval.monitor`) run at epoch ends on rank 0.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdclr.augment.boost import BoostConfig
from sdclr.augment.boost import boost as boost_view
from sdclr.augment.ops import ContrastiveAugmentConfig, Shard, normalize
from sdclr.augment.views import Batch, contrastive_view
from sdclr.config.derived import boost_preset
from sdclr.data.banks import FileImages, TensorImages, as_images
from sdclr.errors import TrainingError
from sdclr.eval.monitor import TrainingMonitor
from sdclr.methods.base import Method
from sdclr.models.checkpoint import save_checkpoint
from sdclr.models.contrastive import ContrastiveModel
from sdclr.train.bcl import LossMemory
from sdclr.utils.distributed import any_rank, barrier, gather_with_grad, global_mean, world_size
from sdclr.utils.distributed import rank as get_rank
from sdclr.utils.precision import autocast
from sdclr.utils.progress import progress_bar
from sdclr.utils.rng import restore_rng, rng_state
from sdclr.utils.schedule import cosine_temperature, warmup_cosine
from sdclr.utils.signals import Interrupted, StopSignal


def batches_per_epoch(
    n: int, batch_size: int, drop_last: bool, world: int = 1
) -> list[tuple[int, int]]:
    """(start, end) of each global batch. A trailing single image is dropped (BN needs two);
    under torchrun the last batch is cut to a multiple of the number of ranks (every rank
    needs an equal slice for the feature gather)."""
    out = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    start, end = out[-1]
    end = start + (end - start) // world * world
    out[-1] = (start, end)
    last = end - start
    if last < 2 * world or (drop_last and last < batch_size):
        out.pop()
    return out


def augment_config(data_cfg) -> ContrastiveAugmentConfig:
    return ContrastiveAugmentConfig(
        size=int(data_cfg.image_size),
        scale=tuple(data_cfg.crop_scale),
        blur_p=float(data_cfg.blur_p),
    )


@dataclass
class StepSettings:
    """Numerics of the training step: bf16 autocast and channels_last on CUDA by default,
    plain float32 on CPU."""

    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode for the model

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def step_settings(cfg, device: torch.device) -> StepSettings:
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    # auto: off under torchrun, where SyncBatchNorm breaks the compiled graph (pytorch#161302)
    compile_ = cfg.compile if cfg.compile is not None else cuda and world_size() == 1
    return StepSettings(
        torch.bfloat16 if precision == "bf16" else None,
        bool(channels_last),
        bool(compile_),
        str(cfg.compile_mode),
    )


def prepare_model(model: ContrastiveModel, settings: StepSettings) -> ContrastiveModel:
    """channels_last and torch.compile in place (parameter names stay the same)."""
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.compile:
        raise_recompile_limit()
        model.backbone.compile(mode=settings.compile_mode)
        model.head.compile(mode=settings.compile_mode)
    return model


def raise_recompile_limit(limit: int = 32) -> None:
    """Let dynamo keep more graphs per compiled forward than its default 8. A pretraining run
    needs one per combination of branch (dense, pruned or fused), grad mode (training,
    monitors) and batch shape (full, last, the monitors' chunks), and past the limit dynamo
    silently falls back to eager."""
    import torch._dynamo.config as dynamo_config

    dynamo_config.recompile_limit = max(int(dynamo_config.recompile_limit), limit)


def make_views(
    x: Batch,
    aug: ContrastiveAugmentConfig,
    generator: torch.Generator,
    mean: list[float],
    std: list[float],
    settings: StepSettings,
    boost: tuple[torch.Tensor, BoostConfig] | None = None,
    shard: Shard | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of a uint8 batch (resident or decoded files), normalised.

    ``boost``: (per-sample strengths [B], BCL config); each view then gets BCL's boosted
    RandAugment after the usual augmentation and before normalisation (draw order: view 1,
    its boost, view 2, its boost). ``shard``: ``x`` is this rank's chunk of the global batch
    (the draws cover the global batch, see :class:`sdclr.augment.ops.Shard`)."""
    compiled = settings.compile  # torch.compile covers the augmentation's apply step too
    v1 = contrastive_view(x, aug, generator, shard, compiled)
    if boost is not None:
        v1 = boost_view(v1, boost[0], boost[1], generator, shard)
    v2 = contrastive_view(x, aug, generator, shard, compiled)
    if boost is not None:
        v2 = boost_view(v2, boost[0], boost[1], generator, shard)
    v1, v2 = normalize(v1, mean, std), normalize(v2, mean, std)
    fmt = settings.memory_format
    return v1.contiguous(memory_format=fmt), v2.contiguous(memory_format=fmt)


class MethodStep(nn.Module):
    """The whole forward of a step (both branches and the loss) as one module call, so that
    DistributedDataParallel sees one forward per backward."""

    def __init__(self, model: ContrastiveModel, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.method.loss(self.model, v1, v2)


def wrap_distributed(model: ContrastiveModel, method: Method) -> nn.Module | None:
    """DDP over the step when running under torchrun (gradients averaged over ranks)."""
    if world_size() == 1:
        return None
    import inspect

    device = next(model.parameters()).device
    ddp_cls = nn.parallel.DistributedDataParallel
    # global-batch BN keeps the buffers identical: no per-forward buffer broadcast
    params = inspect.signature(ddp_cls.__init__).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return ddp_cls(
        MethodStep(model, method),
        device_ids=[device.index] if device.type == "cuda" else None,
        **{no_sync: False},
    )


def train_step(
    model: ContrastiveModel,
    method: Method,
    opt: torch.optim.Optimizer,
    v1: torch.Tensor,
    v2: torch.Tensor,
    settings: StepSettings,
    ddp: nn.Module | None = None,
) -> torch.Tensor:
    """One optimisation step, then the method's momentum update (``after_step``); returns
    the detached loss (no host synchronisation)."""
    with autocast(v1.device.type, settings.amp_dtype):
        loss = ddp(v1, v2) if ddp is not None else method.loss(model, v1, v2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    method.after_step(model)
    return loss.detach()


def make_optimizer(
    model: ContrastiveModel, p, extra: list[nn.Parameter] | tuple = ()
) -> torch.optim.SGD:
    """SGD over the model and ``extra`` (the method's parameters outside the model, e.g.
    BYOL's predictor), one parameter group."""
    params = list(model.parameters()) + list(extra) if extra else model.parameters()
    return torch.optim.SGD(params, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay)


def epoch_temperature(cfg, epoch: int) -> float:
    """The contrastive temperature of 0-based ``epoch``: ``pretrain.temperature``, or the
    cosine schedule of ``temperature.*`` (t_max at epoch 0)."""
    t = cfg.temperature
    if t.schedule == "cosine":
        return cosine_temperature(epoch, float(t.t_min), float(t.t_max), float(t.period))
    return float(cfg.pretrain.temperature)


def _gather(t: torch.Tensor, world: int) -> torch.Tensor:
    return gather_with_grad(t.contiguous()) if world > 1 else t


def pretrain(
    cfg,
    model: ContrastiveModel,
    method: Method,
    images: torch.Tensor | TensorImages | FileImages,
    generator: torch.Generator,
    checkpoint_path: Path,
    extra_state: dict[str, Any],
    log=None,
    progress: bool = True,
    resume_from: dict[str, Any] | None = None,
    stop: StopSignal | None = None,
    monitor: TrainingMonitor | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``images``: uint8 [N, 3, H, W] on the training device, or a bank of
    image files decoded per batch (:mod:`sdclr.data.banks`).

    ``method`` is any method object (:mod:`sdclr.methods.simclr`, :mod:`sdclr.methods.moco`,
    :mod:`sdclr.methods.byol`). ``log(record, step, kind="pretrain")`` receives the step and epoch
    records, and the ``knn`` / ``diagnostics`` records of ``monitor``.

    Checkpoints (every ``checkpoint.every`` epochs, at the end, and when ``stop`` reports a
    signal) hold everything needed to continue exactly: weights, optimiser, the method's
    state (momentum network, queue, predictor), the BCL loss memory and strengths, position
    in the epoch (its permutation and batch index), the current mask, the monitor's curves
    and every RNG state. ``resume_from`` is such a checkpoint.
    """
    p = cfg.pretrain
    bank = as_images(images)
    device = bank.device
    settings = step_settings(cfg, device)
    n = len(bank)
    world, rank = world_size(), get_rank()
    shard = Shard(rank, world) if world > 1 else None
    batches = batches_per_epoch(n, p.batch_size, p.drop_last, world)
    total_steps = len(batches) * p.epochs
    warmup_steps = len(batches) * p.warmup_epochs
    aug = augment_config(cfg.data)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    boost_cfg = boost_preset(cfg) if cfg.boost else None
    memory = LossMemory(n, float(cfg.bcl.momentum), device) if boost_cfg is not None else None
    strength = torch.zeros(n, device=device) if boost_cfg is not None else None
    knn = monitor.knn if monitor is not None else None
    diag = monitor.diagnostics if monitor is not None else None
    track = memory is not None or diag is not None
    method.track_samples = track
    has_temperature = method.temperature is not None

    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
    prepare_model(model, settings)
    # the method's own networks (momentum copy, predictor) exist before the optimiser; any
    # random draw this makes is replaced below by the checkpoint's RNG state on resume
    method.setup(model)
    opt = make_optimizer(model, p, method.extra_parameters())
    densities: list[float] = []
    epoch_losses: list[float] = []
    temperatures: list[float] = []
    knn_curve: list[dict[str, Any]] = []
    diag_records: list[dict[str, Any]] = []
    step, start_epoch, start_batch = 0, 0, 0
    perm: torch.Tensor | None = None
    carried_loss = 0.0
    seconds_before = 0.0
    if resume_from is not None:
        opt.load_state_dict(resume_from["optimizer"])
        if resume_from.get("method_state"):
            method.load_state_dict(resume_from["method_state"])
        if memory is not None and resume_from.get("boost"):
            memory.load_state_dict(resume_from["boost"]["memory"])
        step, start_epoch = int(resume_from["step"]), int(resume_from["epoch"])
        densities = list(resume_from["mask_density"])
        epoch_losses = list(resume_from["epoch_losses"])
        temperatures = list(resume_from.get("temperatures", []))
        knn_curve = list(resume_from.get("knn", []))
        diag_records = list(resume_from.get("diagnostics", []))
        seconds_before = float(resume_from.get("seconds", 0.0))
        restore_rng(resume_from["rng"], generator)
        position = resume_from.get("position")
        if position is not None:  # interrupted inside an epoch
            start_batch = int(position["batch"])
            perm = position["perm"].to(device)
            carried_loss = float(position["loss_sum"])
            method.masks = {k: v.to(device) for k, v in resume_from["masks"].items()}
            if strength is not None and position.get("strength") is not None:
                strength = position["strength"].to(device)
            if diag is not None and position.get("class_loss") is not None:
                diag.load_epoch_state(position["class_loss"])
    model.train()
    t0 = time.time()
    lr = p.lr

    ddp = wrap_distributed(model, method)

    def save(epoch: int, position: dict[str, Any] | None = None) -> None:
        if rank != 0:
            return
        save_checkpoint(
            checkpoint_path,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "method_state": method.state_dict(),
                "epoch": epoch,
                "step": step,
                "position": position,
                "masks": {k: v.cpu() for k, v in (method.masks or {}).items()},
                "mask_density": densities,
                "epoch_losses": epoch_losses,
                "temperatures": temperatures,
                "boost": {"memory": memory.state_dict()} if memory is not None else None,
                "knn": knn_curve,
                "diagnostics": diag_records,
                "rng": rng_state(generator),
                "finished": epoch == p.epochs and position is None,
                "seconds": seconds_before + time.time() - t0,
                **extra_state,
            },
        )

    def emit(record: dict[str, Any], kind: str = "pretrain") -> None:
        if log is not None:
            if kind == "pretrain":
                log(record, step)
            else:
                log(record, step, kind)

    bar = progress_bar(
        range(start_epoch, p.epochs),
        desc="pretrain",
        enabled=progress,
        initial=start_epoch,
        total=p.epochs,
    )
    for epoch in bar:
        resuming_mid_epoch = perm is not None
        temperature = epoch_temperature(cfg, epoch) if has_temperature else None
        if has_temperature:
            method.temperature = temperature
        if resuming_mid_epoch:
            density = None  # this epoch's mask was restored, its density already recorded
        else:
            density = method.on_epoch_start(model)
            if density is not None:
                densities.append(density)
            if temperature is not None:
                temperatures.append(temperature)
            perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
            if memory is not None:  # BCL: strengths fixed for the epoch, 0 in the first one
                strength = memory.strengths() if epoch > 0 else torch.zeros(n, device=device)
            if diag is not None:
                diag.reset_epoch()
        loss_sum = torch.zeros((), device=device) + carried_loss
        window_sum = torch.zeros((), device=device)
        window = 0
        idx_batches = [perm[s:e] for s, e in batches[start_batch:]]
        # under torchrun each rank decodes and augments only its chunk of the global batch
        local = [i.chunk(world)[rank] for i in idx_batches] if shard else idx_batches
        pending = bank.batches(local)
        for b, idx, x in zip(range(start_batch, len(batches)), idx_batches, pending):
            lr = warmup_cosine(step, total_steps, warmup_steps, p.lr, p.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            method.set_progress(step / total_steps)
            boost = (strength[idx], boost_cfg) if memory is not None else None
            v1, v2 = make_views(x, aug, generator, mean, std, settings, boost, shard)
            loss = train_step(model, method, opt, v1, v2, settings, ddp)
            if track:  # per-sample losses of the global batch, on the device
                per_sample = _gather(method.sample_losses(), world)
                if memory is not None:
                    memory.update(idx, per_sample)
                if diag is not None:
                    diag.add_losses(idx, per_sample)
            loss_sum += loss
            window_sum += loss
            window += 1
            step += 1
            if step % p.log_every == 0:
                value = global_mean(window_sum) / window  # the only host sync in the loop
                _check_finite(value, epoch, step, lr)
                emit({"step": step, "epoch": epoch + 1, "loss": value, "lr": lr})
                window_sum.zero_()
                window = 0
            # ranks agree on stopping at the same step: checked at every step in one process,
            # at the logging steps (which synchronise anyway) under torchrun
            check = stop is not None and (world == 1 or step % p.log_every == 0)
            if check and any_rank(stop.requested, device) and b + 1 < len(batches):
                so_far = global_mean(loss_sum)
                _check_finite(so_far, epoch, step, lr)
                position = {"batch": b + 1, "perm": perm.cpu(), "loss_sum": so_far}
                if strength is not None:
                    position["strength"] = strength.cpu()
                if diag is not None:
                    position["class_loss"] = diag.epoch_state()
                save(epoch, position)
                raise Interrupted(
                    _interrupt_message(stop.signum, epoch, step, checkpoint_path), stop.signum
                )
        start_batch, carried_loss, perm = 0, 0.0, None
        epoch_loss = global_mean(loss_sum) / len(batches)
        _check_finite(epoch_loss, epoch, step, lr)
        epoch_losses.append(epoch_loss)
        record = {"epoch": epoch + 1, "epoch_loss": epoch_loss, "lr": lr}
        if density is not None:
            record["mask_density"] = density
        if temperature is not None:
            record["temperature"] = temperature
        if method.momentum is not None:
            record["momentum"] = float(method.momentum)
        emit(record)
        done = epoch + 1
        if knn is not None and knn.due(done):
            if rank == 0:  # the others wait at the barrier
                entry = {"epoch": done, **knn(model.backbone)}
                knn_curve.append(entry)
                emit(entry, "knn")
            barrier()
        if diag is not None and diag.due(done):
            if rank == 0:
                entry = diag(model, method, done)
                diag_records.append(entry)
                emit(entry, "diagnostics")
            barrier()
        bar.set_postfix(loss=f"{epoch_loss:.4f}", lr=f"{lr:.3g}")
        last = epoch + 1 == p.epochs
        interrupted = stop is not None and any_rank(stop.requested, device)
        if (epoch + 1) % cfg.checkpoint.every == 0 or last or interrupted:
            save(epoch + 1)
        if interrupted and not last:
            raise Interrupted(
                _interrupt_message(stop.signum, epoch + 1, step, checkpoint_path), stop.signum
            )
    result: dict[str, Any] = {
        "epochs": p.epochs,
        "steps": step,
        "final_loss": epoch_losses[-1],
        "epoch_loss": epoch_losses,
        "images": n,
        "batch_size": p.batch_size,
        "seconds": seconds_before + time.time() - t0,
        "precision": "bf16" if settings.amp_dtype else "fp32",
        "channels_last": settings.channels_last,
        "compile": settings.compile,
        "compile_mode": settings.compile_mode if settings.compile else None,
        "fuse_branches": bool(method.fuses),  # what ran
        "resumed": resume_from is not None,
    }
    if method.pruned:
        result["mask_density"] = densities
    if temperatures:
        result["temperature"] = temperatures
    if boost_cfg is not None:
        result["boost"] = {
            "k": boost_cfg.k,
            "base": boost_cfg.base,
            "span": boost_cfg.span,
            "random_scale": boost_cfg.random_scale,
            "momentum": float(cfg.bcl.momentum),
        }
    if knn is not None:
        result["knn"] = knn_curve
    if diag is not None:
        result["diagnostics"] = diag_records
    return result


def _interrupt_message(signum: int | None, epoch: int, step: int, path: Path) -> str:
    import signal

    name = signal.Signals(signum).name if signum else "signal"
    return (
        f"{name} received: stopped at epoch {epoch}, step {step}; checkpoint written to "
        f"{path}. Run the same command again (same job directory) to resume"
    )


def _check_finite(value: float, epoch: int, step: int, lr: float) -> None:
    if not math.isfinite(value):
        raise TrainingError(
            f"the loss became {value} at epoch {epoch + 1}, step {step} (lr {lr:.4g}); the "
            f"last good checkpoint is kept. Lower pretrain.lr or check the data"
        )
