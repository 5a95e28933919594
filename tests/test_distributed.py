"""NT-Xent across ranks (gloo, 2 CPU processes): negatives span the global batch and the
gradients equal those of one process holding the whole batch (float64: tests/numerics.py)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from numerics import assert_close64

from sdclr.losses.contrastive import nt_xent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, z1: torch.Tensor, z2: torch.Tensor, out: dict):
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


@pytest.mark.numerics
def test_global_negatives_and_gradients_match_a_single_process():
    g = torch.Generator().manual_seed(0)
    z1, z2 = (torch.randn(8, 6, generator=g, dtype=torch.float64) for _ in range(2))
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, _free_port(), z1, z2, out), nprocs=2, join=True)

    a, b = z1.clone().requires_grad_(True), z2.clone().requires_grad_(True)
    loss = nt_xent(a, b, 0.2)
    loss.backward()
    assert_close64(out["loss"], loss.detach(), what="loss")
    for rank in range(2):
        sl = slice(4 * rank, 4 * rank + 4)
        expected = torch.cat([a.grad[sl], b.grad[sl]])
        assert_close64(out["grads"][rank], expected, what=f"rank {rank}")
    # and a local-only loss (no gathered negatives) would differ
    assert not torch.allclose(nt_xent(z1[:4], z2[:4], 0.2), loss.detach(), atol=1e-3)


def test_each_rank_augments_only_its_chunk_and_gets_the_single_process_views():
    """Under torchrun a rank decodes and augments only its chunk; the draws still cover the
    global batch, so the views (BCL boost included) equal the single-process ones chunk by
    chunk, and the generators stay in step."""
    from sdclr.augment.boost import BoostConfig
    from sdclr.augment.ops import ContrastiveAugmentConfig, Shard
    from sdclr.train.step import make_views
    from sdclr.utils.precision import StepSettings

    g = torch.Generator().manual_seed(0)
    images = (torch.rand(6, 3, 40, 48, generator=g) * 255).to(torch.uint8)
    files = [images[i, :, : 28 + 2 * i, : 44 - 3 * i] for i in range(6)]  # varied sizes
    cfg = ContrastiveAugmentConfig(size=24, scale=(0.08, 1.0), blur_p=0.5)
    strength = torch.rand(6, generator=g)
    mean, std = [0.5] * 3, [0.25] * 3
    for batch in (images, files):
        whole_gen = torch.Generator().manual_seed(3)
        whole = make_views(
            batch, cfg, whole_gen, mean, std, StepSettings(), (strength, BoostConfig.for_sdclr())
        )
        for rank in range(3):
            gen = torch.Generator().manual_seed(3)
            part = make_views(
                batch[2 * rank : 2 * rank + 2],
                cfg,
                gen,
                mean,
                std,
                StepSettings(),
                (strength, BoostConfig.for_sdclr()),
                Shard(rank, 3),
            )
            for mine, single in zip(part, whole):
                assert torch.equal(mine, single[2 * rank : 2 * rank + 2])
            assert torch.equal(gen.get_state(), whole_gen.get_state())
