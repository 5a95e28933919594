"""Process-group helpers. Everything works unchanged in a single process."""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from sdclr.errors import ConfigError

# The schema's default for distributed.timeout_min: generous, because rank 0 alone runs the
# probes and writes checkpoints while the other ranks wait in a collective (NCCL's own
# default, 10 minutes, aborts the job when that takes longer).
DEFAULT_TIMEOUT_MIN = 60.0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and returns this
    rank's slice, so every rank's features receive the gradient of every rank's loss."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        n = grad.shape[0] // dist.get_world_size()
        return grad[dist.get_rank() * n : (dist.get_rank() + 1) * n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all ranks (rank order), differentiably."""
    if not is_distributed() or world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


class _AllReduceWithGrad(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum that every rank sees is the sum of the
    gradients from every rank."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm with statistics over the global batch on any backend (torch's SyncBatchNorm
    runs on GPUs only; this one also runs over gloo on CPU, which the tests use)."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed() and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        c = x.shape[1]
        shape = [1, c] + [1] * (x.dim() - 2)
        local_count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        # two passes (mean, then squared deviations) to avoid E[x^2] - E[x]^2 cancellation
        first = _AllReduceWithGrad.apply(torch.cat([x.sum(dims), local_count]))
        count = first[c]
        mean = first[:c] / count
        var = _AllReduceWithGrad.apply((x - mean.view(shape)).square().sum(dims)) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = (
                    self.momentum
                    if self.momentum is not None
                    else 1.0 / float(self.num_batches_tracked)
                )
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                unbiased = var.detach() * count / (count - 1).clamp(min=1)
                self.running_var.mul_(1 - m).add_(m * unbiased)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Every BN (both copies of a dual BN included) normalises over the global batch:
    torch's SyncBatchNorm on CUDA, :class:`GlobalBatchNorm` elsewhere."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
            child, GlobalBatchNorm
        ):
            new = GlobalBatchNorm(
                child.num_features,
                child.eps,
                child.momentum,
                child.affine,
                child.track_running_stats,
            )
            floats = [t for t in child.state_dict().values() if t.is_floating_point()]
            if floats:
                new.to(floats[0])  # the old layer's device and dtype (float64 checks too)
            new.load_state_dict(child.state_dict())
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child, device)
    return module


_RENDEZVOUS: dict[str, Any] = {}  # the process's env:// store, rank and world size


def env_rendezvous() -> tuple[dist.Store, int, int]:
    """The key-value store, rank and world size of the ``env://`` rendezvous torchrun (or
    submitit, :func:`init_from_env`) describes, made once per process. The runner shares its
    start time through this store before the config is composed, and the process group is
    then built on the same store with the configured timeout."""
    if "store" not in _RENDEZVOUS:
        store, rank, world = next(dist.rendezvous("env://"))
        _RENDEZVOUS.update(store=store, rank=rank, world=world)
    return _RENDEZVOUS["store"], _RENDEZVOUS["rank"], _RENDEZVOUS["world"]


def init_from_env(
    device_name: str, timeout_min: float = DEFAULT_TIMEOUT_MIN
) -> torch.device | None:
    """Join the process group torchrun describes (WORLD_SIZE > 1) with collectives that time
    out after ``timeout_min`` minutes (``distributed.timeout_min``); returns this rank's
    device, or None when not launched by torchrun."""
    if "WORLD_SIZE" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        # a multi-task SLURM job started by submitit (hydra/launcher=slurm): derive the
        # torch.distributed variables (RANK, WORLD_SIZE, MASTER_ADDR, ...) from SLURM's
        try:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export()
        except (ImportError, RuntimeError):
            pass
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    use_cuda = torch.cuda.is_available() and device_name != "cpu"
    if not is_distributed():
        # what init_process_group("env://") does, on the store the start time went through
        store, rank, world = env_rendezvous()
        timeout = timedelta(minutes=float(timeout_min))
        store.set_timeout(timeout)
        dist.init_process_group(
            "nccl" if use_cuda else "gloo",
            store=dist.PrefixStore("default_pg", store),
            rank=rank,
            world_size=world,
            timeout=timeout,
        )
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (a collective: call it on all); as it is in one
    process."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_rows(
    rows: torch.Tensor | None, counts: list[int], width: int, device: torch.device
) -> torch.Tensor | None:
    """Rank 0 gets the rows of every rank stacked in rank order, ``counts[r]`` rows of
    ``width`` float32 columns from rank r (``rows`` None where it has none); the other ranks
    get None. A collective: every rank calls it with the same ``counts`` and ``width``.
    ``gather`` (not ``all_gather``) so that only rank 0 holds the whole stack."""
    if not is_distributed() or world_size() == 1:
        return rows
    world, me = world_size(), rank()
    most = max(counts)
    send = torch.zeros(most, width, dtype=torch.float32, device=device)  # equal sizes
    if rows is not None and len(rows):
        send[: len(rows)] = rows
    if me != 0:
        dist.gather(send, None, dst=0)
        return None
    received = torch.empty(world, most, width, dtype=torch.float32, device=device)
    dist.gather(send, list(received.unbind(0)), dst=0)
    return torch.cat([received[r, :n] for r, n in enumerate(counts)])


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if ``flag`` is true on some rank (a collective: call it on all)."""
    if not is_distributed():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def global_mean(t: torch.Tensor) -> float:
    """``t`` averaged over ranks, as a Python float (a host sync; a collective under DDP)."""
    if is_distributed() and world_size() > 1:
        t = t.detach().clone()
        dist.all_reduce(t)
        t /= world_size()
    return float(t)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            "config key 'device': CUDA was asked for but no GPU is available; "
            "use device=cpu or device=auto"
        )
    return torch.device(name)
