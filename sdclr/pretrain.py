"""The pretraining loop: a plain loop over GPU- (or CPU-) resident uint8 images.

Batches are index gathers into the resident dataset; both views are drawn with the batched
augmentation ops from one seeded generator. The loss is accumulated on the device and read
only every ``log_every`` steps, so the step itself never waits on the host.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdclr.augment import ContrastiveAugmentConfig, normalize
from sdclr.checkpoint import save_checkpoint
from sdclr.distributed import any_rank, global_mean, world_size
from sdclr.distributed import rank as get_rank
from sdclr.errors import TrainingError
from sdclr.imagebank import FileImages, TensorImages, as_images
from sdclr.method import ContrastiveMethod
from sdclr.model import ContrastiveModel
from sdclr.precision import autocast
from sdclr.progress import progress_bar
from sdclr.resume import Interrupted, StopSignal, restore_rng, rng_state
from sdclr.schedule import warmup_cosine
from sdclr.views import Batch, contrastive_view


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

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def step_settings(cfg, device: torch.device) -> StepSettings:
    cuda = device.type == "cuda"
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    channels_last = cfg.channels_last if cfg.channels_last is not None else cuda
    compile_ = cfg.compile if cfg.compile is not None else cuda
    return StepSettings(
        torch.bfloat16 if precision == "bf16" else None, bool(channels_last), bool(compile_)
    )


def prepare_model(model: ContrastiveModel, settings: StepSettings) -> ContrastiveModel:
    """channels_last and torch.compile in place (parameter names stay the same)."""
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.compile:
        model.backbone.compile()
        model.head.compile()
    return model


def make_views(
    x: Batch,
    aug: ContrastiveAugmentConfig,
    generator: torch.Generator,
    mean: list[float],
    std: list[float],
    settings: StepSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent augmentations of a uint8 batch (resident or decoded files), normalised."""
    v1 = normalize(contrastive_view(x, aug, generator), mean, std)
    v2 = normalize(contrastive_view(x, aug, generator), mean, std)
    fmt = settings.memory_format
    return v1.contiguous(memory_format=fmt), v2.contiguous(memory_format=fmt)


class MethodStep(nn.Module):
    """The whole forward of a step (both branches and the loss) as one module call, so that
    DistributedDataParallel sees one forward per backward."""

    def __init__(self, model: ContrastiveModel, method: ContrastiveMethod):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.method.loss(self.model, v1, v2)


def wrap_distributed(model: ContrastiveModel, method: ContrastiveMethod) -> nn.Module | None:
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
    method: ContrastiveMethod,
    opt: torch.optim.Optimizer,
    v1: torch.Tensor,
    v2: torch.Tensor,
    settings: StepSettings,
    ddp: nn.Module | None = None,
) -> torch.Tensor:
    """One optimisation step; returns the detached loss (no host synchronisation)."""
    with autocast(v1.device.type, settings.amp_dtype):
        loss = ddp(v1, v2) if ddp is not None else method.loss(model, v1, v2)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def make_optimizer(model: ContrastiveModel, p) -> torch.optim.SGD:
    return torch.optim.SGD(
        model.parameters(), lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay
    )


def pretrain(
    cfg,
    model: ContrastiveModel,
    method: ContrastiveMethod,
    images: torch.Tensor | TensorImages | FileImages,
    generator: torch.Generator,
    checkpoint_path: Path,
    extra_state: dict[str, Any],
    log=None,
    progress: bool = True,
    resume_from: dict[str, Any] | None = None,
    stop: StopSignal | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``images``: uint8 [N, 3, H, W] on the training device, or a bank of
    image files decoded per batch (:mod:`sdclr.imagebank`).

    Checkpoints (every ``checkpoint.every`` epochs, at the end, and when ``stop`` reports a
    signal) hold everything needed to continue exactly: weights, optimiser, position in the
    epoch (its permutation and batch index), the current mask and every RNG state.
    ``resume_from`` is such a checkpoint.
    """
    p = cfg.pretrain
    bank = as_images(images)
    device = bank.device
    settings = step_settings(cfg, device)
    n = len(bank)
    world, rank = world_size(), get_rank()
    batches = batches_per_epoch(n, p.batch_size, p.drop_last, world)
    total_steps = len(batches) * p.epochs
    warmup_steps = len(batches) * p.warmup_epochs
    aug = augment_config(cfg.data)
    mean, std = list(cfg.data.mean), list(cfg.data.std)
    opt = make_optimizer(model, p)
    densities: list[float] = []
    epoch_losses: list[float] = []
    step, start_epoch, start_batch = 0, 0, 0
    perm: torch.Tensor | None = None
    carried_loss = 0.0
    seconds_before = 0.0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        opt.load_state_dict(resume_from["optimizer"])
        step, start_epoch = int(resume_from["step"]), int(resume_from["epoch"])
        densities = list(resume_from["mask_density"])
        epoch_losses = list(resume_from["epoch_losses"])
        seconds_before = float(resume_from.get("seconds", 0.0))
        restore_rng(resume_from["rng"], generator)
        position = resume_from.get("position")
        if position is not None:  # interrupted inside an epoch
            start_batch = int(position["batch"])
            perm = position["perm"].to(device)
            carried_loss = float(position["loss_sum"])
            method.masks = {k: v.to(device) for k, v in resume_from["masks"].items()}
    prepare_model(model, settings)
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
                "epoch": epoch,
                "step": step,
                "position": position,
                "masks": {k: v.cpu() for k, v in (method.masks or {}).items()},
                "mask_density": densities,
                "epoch_losses": epoch_losses,
                "rng": rng_state(generator),
                "finished": epoch == p.epochs and position is None,
                "seconds": seconds_before + time.time() - t0,
                **extra_state,
            },
        )

    bar = progress_bar(
        range(start_epoch, p.epochs),
        desc="pretrain",
        enabled=progress,
        initial=start_epoch,
        total=p.epochs,
    )
    for epoch in bar:
        resuming_mid_epoch = perm is not None
        if resuming_mid_epoch:
            density = None  # this epoch's mask was restored, its density already recorded
        else:
            density = method.on_epoch_start(model)
            if density is not None:
                densities.append(density)
            perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
        loss_sum = torch.zeros((), device=device) + carried_loss
        window_sum = torch.zeros((), device=device)
        window = 0
        pending = bank.batches([perm[s:e] for s, e in batches[start_batch:]])
        for b, x in zip(range(start_batch, len(batches)), pending):
            lr = warmup_cosine(step, total_steps, warmup_steps, p.lr, p.min_lr)
            for group in opt.param_groups:
                group["lr"] = lr
            v1, v2 = make_views(x, aug, generator, mean, std, settings)
            if world > 1:  # every rank draws the global batch's views, then takes its slice
                v1, v2 = v1.chunk(world)[rank], v2.chunk(world)[rank]
            loss = train_step(model, method, opt, v1, v2, settings, ddp)
            loss_sum += loss
            window_sum += loss
            window += 1
            step += 1
            if step % p.log_every == 0:
                value = global_mean(window_sum) / window  # the only host sync in the loop
                _check_finite(value, epoch, step, lr)
                if log is not None:
                    log({"step": step, "epoch": epoch + 1, "loss": value, "lr": lr}, step)
                window_sum.zero_()
                window = 0
            # ranks agree on stopping at the same step: checked at every step in one process,
            # at the logging steps (which synchronise anyway) under torchrun
            check = stop is not None and (world == 1 or step % p.log_every == 0)
            if check and any_rank(stop.requested, device) and b + 1 < len(batches):
                so_far = global_mean(loss_sum)
                _check_finite(so_far, epoch, step, lr)
                save(epoch, {"batch": b + 1, "perm": perm.cpu(), "loss_sum": so_far})
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
        if log is not None:
            log(record, step)
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
        "resumed": resume_from is not None,
    }
    if method.pruned:
        result["mask_density"] = densities
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
