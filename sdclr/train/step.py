"""One pretraining step and what it is built from: the epoch's batches, the two augmented
views, the optimiser, DistributedDataParallel over the step, the step itself (forward, loss,
backward, optimiser step, the method's momentum update) and the epoch's temperature.

:func:`sdclr.train.loop.pretrain` strings these together; the bench times them one by one.
"""

from __future__ import annotations

import torch
from torch import nn

from sdclr.augment.boost import BoostConfig
from sdclr.augment.boost import boost as boost_view
from sdclr.augment.ops import ContrastiveAugmentConfig, Shard, normalize
from sdclr.augment.views import Batch, contrastive_view
from sdclr.methods.base import Method
from sdclr.models.backbone import use_unit_stride_pointwise
from sdclr.models.contrastive import ContrastiveModel
from sdclr.utils.distributed import gather_with_grad, world_size
from sdclr.utils.precision import StepSettings, autocast
from sdclr.utils.schedule import cosine_temperature


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


def prepare_model(model: ContrastiveModel, settings: StepSettings) -> ContrastiveModel:
    """channels_last and torch.compile in place (parameter names stay the same); cuDNN's
    autotuner on CUDA (the batch shapes repeat); on the CPU with channels_last or compile
    (inductor lays convolutions out channels_last), the strided 1x1 convs as stride-1 convs
    of every other pixel, around a oneDNN crash (:class:`sdclr.models.backbone.BranchConv2d`)."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu" and (settings.channels_last or settings.compile):
        use_unit_stride_pointwise(model.backbone)
    if settings.channels_last:
        model.to(memory_format=torch.channels_last)
    if settings.compile:
        raise_recompile_limit()
        model.compile_mode = settings.compile_mode  # the momentum methods' copy compiles alike
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


def gather_samples(t: torch.Tensor, world: int) -> torch.Tensor:
    """Per-sample values of the global batch: this rank's, gathered from all ranks under
    torchrun (with their gradients)."""
    return gather_with_grad(t.contiguous()) if world > 1 else t
