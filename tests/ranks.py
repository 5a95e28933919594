"""Workers for the tests that spawn gloo ranks (torch.multiprocessing.spawn): a spawned
process unpickles its worker by module name, and it can import a helper module (tests/ is on
pythonpath) but not a test module (imported by path: --import-mode=importlib)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
from tiny import CHANNELS

from sdclr.data.banks import as_images
from sdclr.eval.features import EvalSettings
from sdclr.eval.knn import knn_monitor, shared_bank_features
from sdclr.losses.contrastive import nt_xent
from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.backbone import create_backbone
from sdclr.models.contrastive import build_model
from sdclr.train.step import train_step, wrap_distributed
from sdclr.utils.distributed import convert_sync_batchnorm, init_from_env
from sdclr.utils.precision import StepSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- tests/train/test_step.py: a 2-process DDP step against one process --------------------


def ddp_model_and_method():
    torch.manual_seed(0)
    model = build_model("resnet18", True, CHANNELS, 3, 16, True).double()
    method = ContrastiveMethod(0.2, 0.9, 0.0, True)
    return model, method


def ddp_views():
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2))


def ddp_worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, method = ddp_model_and_method()
        convert_sync_batchnorm(model, torch.device("cpu"))
        model.train()
        method.on_epoch_start(model)
        ddp = wrap_distributed(model, method)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients only
        v1, v2 = ddp_views()
        loss = train_step(
            model, method, opt, v1.chunk(world)[rank], v2.chunk(world)[rank], StepSettings(), ddp
        )
        losses = [torch.zeros((), dtype=loss.dtype) for _ in range(world)]
        dist.all_gather(losses, loss)
        if rank == 0:
            out["loss"] = torch.stack(losses).mean()
            out["grads"] = {
                n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
            }
            out["masks"] = {k: v.clone() for k, v in method.masks.items()}
            out["running_mean"] = model.backbone.bn1.bn[0].running_mean.clone()
    finally:
        dist.destroy_process_group()


# --- tests/losses/test_contrastive.py: NT-Xent across ranks --------------------------------


def nt_xent_worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        n = z1.shape[0] // world
        a = z1[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        b = z2[rank * n : (rank + 1) * n].clone().requires_grad_(True)
        loss = nt_xent(a, b, 0.2)
        loss.backward()
        # DDP averages parameter gradients over ranks; do the same for the feature grads
        grads = torch.cat([a.grad, b.grad]) / world
        gathered = [torch.empty_like(grads) for _ in range(world)]
        dist.all_gather(gathered, grads)
        losses = [torch.zeros((), dtype=loss.dtype) for _ in range(world)]
        dist.all_gather(losses, loss.detach())
        if rank == 0:
            out["loss"] = torch.stack(losses).mean()
            out["grads"] = torch.stack(gathered)
    finally:
        dist.destroy_process_group()


# --- tests/eval/test_knn.py: the kNN monitor shared over 2 ranks against one process -------

# 37 pool images (batches of 8: rank 0 encodes 3 batches, rank 1 the other 2, the last one
# partial), 5 queries (one batch: rank 1 has no share of them)
KNN_POOL, KNN_QUERIES, KNN_BATCH = 37, 5, 8


def knn_inputs() -> dict:
    """A narrow ResNet-18 at a seeded initialisation, a bank of which a pool of images is the
    kNN bank (as the probe pool is in the training set), and queries."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet18", cifar_stem=True, channels=CHANNELS)
    g = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (KNN_POOL + 4, 3, 16, 16), generator=g, dtype=torch.uint8)
    test = torch.randint(0, 256, (KNN_QUERIES, 3, 16, 16), generator=g, dtype=torch.uint8)
    return {
        "backbone": backbone,
        "bank_images": bank,
        "bank_idx": torch.arange(4, KNN_POOL + 4),
        "bank_labels": torch.arange(KNN_POOL) % 3,
        "test_images": test,
        "test_labels": torch.arange(KNN_QUERIES) % 3,
        "settings": EvalSettings(
            3,
            {"many": [0], "medium": [1], "few": [2]},
            mean=[0.5, 0.5, 0.5],
            std=[0.25, 0.25, 0.25],
            batch_size=KNN_BATCH,
        ),
    }


def knn_monitor_of(inputs: dict) -> dict:
    return knn_monitor(
        inputs["backbone"],
        inputs["bank_images"],
        inputs["bank_labels"],
        inputs["test_images"],
        inputs["test_labels"],
        inputs["settings"],
        k=5,
        bank_idx=inputs["bank_idx"],
    )


def knn_worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        inputs = knn_inputs()
        encoded: list[int] = []  # images this rank's backbone encoded
        inputs["backbone"].register_forward_hook(lambda m, x, y: encoded.append(len(x[0])))
        out[f"result{rank}"] = knn_monitor_of(inputs)
        out[f"encoded{rank}"] = sum(encoded)
        feats = shared_bank_features(
            inputs["backbone"].eval(),
            as_images(inputs["bank_images"]),
            inputs["bank_idx"],
            inputs["settings"],
        )
        out[f"features{rank}"] = feats
    finally:
        dist.destroy_process_group()


# --- tests/utils/test_distributed.py: the configured timeout reaches the process group -----


def timeout_worker(rank: int, world: int, port: int, minutes: float, out: dict):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    device = init_from_env("cpu", minutes)
    try:
        backend = dist.group.WORLD._get_backend(torch.device("cpu"))
        out[rank] = (str(device), dist.get_backend(), backend.options._timeout.total_seconds())
    finally:
        dist.destroy_process_group()
