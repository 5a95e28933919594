"""DDP on CPU with gloo: a 2-process step equals one process on the same global batch (in
float64: tests/numerics.py), and torchrun runs (and resumes) the suite end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from numerics import assert_close64, max_abs
from test_runner import TINY, ok

from sdclr.methods.simclr import ContrastiveMethod
from sdclr.models.contrastive import build_model
from sdclr.train.step import train_step, wrap_distributed
from sdclr.utils.distributed import convert_sync_batchnorm
from sdclr.utils.precision import StepSettings

CHANNELS = [8, 16, 32, 64]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_method():
    torch.manual_seed(0)
    model = build_model("resnet18", True, CHANNELS, 3, 16, True).double()
    method = ContrastiveMethod(0.2, 0.9, 0.0, True)
    return model, method


def _views():
    g = torch.Generator().manual_seed(1)
    return tuple(torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64) for _ in range(2))


def _worker(rank: int, world: int, port: int, out: dict):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, method = _model_and_method()
        convert_sync_batchnorm(model, torch.device("cpu"))
        model.train()
        method.on_epoch_start(model)
        ddp = wrap_distributed(model, method)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: compare gradients only
        v1, v2 = _views()
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


@pytest.mark.numerics
def test_ddp_step_equals_a_single_process_step_on_the_global_batch():
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    model, method = _model_and_method()
    model.train()
    method.on_epoch_start(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    v1, v2 = _views()
    loss = train_step(model, method, opt, v1, v2, StepSettings())
    assert_close64(out["loss"], loss, what="loss")
    grads = out["grads"]
    assert len(grads) > 20
    # relative to the largest gradient: biases before BN have a true gradient of zero and
    # a computed one that is rounding noise
    scale = max_abs(p.grad for p in model.parameters() if p.grad is not None)
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close64(grads[name], p.grad, scale, name)
    assert all(torch.equal(out["masks"][k], method.masks[k]) for k in method.masks)
    # global-batch BN: running statistics as if one process had seen the whole batch
    assert_close64(out["running_mean"], model.backbone.bn1.bn[0].running_mean, what="running mean")


def test_torchrun_pretrain_probe_and_resume(tmp_path, env):
    job = tmp_path / "job"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sdclr",
        *TINY,
        f"hydra.run.dir={job}",
    ]
    ok(
        subprocess.run(
            [*cmd, "stage=pretrain"], capture_output=True, text=True, env=env, timeout=600
        )
    )
    m = json.loads((job / "metrics.json").read_text())
    assert m["pretrain"]["epochs"] == 2 and "linear" not in m
    # the same job continued with stage=all: the finished pretrain is not redone
    out = ok(
        subprocess.run([*cmd, "stage=all"], capture_output=True, text=True, env=env, timeout=600)
    )
    assert out.stdout.count("pretrain: already finished") == 1  # printed by rank 0 only
    m = json.loads((job / "metrics.json").read_text())
    assert {"pretrain", "linear", "fewshot"} <= set(m)
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
