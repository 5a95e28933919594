"""Joining the process group: the configured collective timeout (distributed.timeout_min)
reaches it, over gloo with two processes."""

from __future__ import annotations

import torch.multiprocessing as mp
from ranks import free_port, timeout_worker

from sdclr.config.compose import compose_config
from sdclr.utils.distributed import DEFAULT_TIMEOUT_MIN, init_from_env


def test_the_timeout_setting_reaches_the_process_group():
    out = mp.Manager().dict()
    mp.spawn(timeout_worker, args=(2, free_port(), 7.5, out), nprocs=2, join=True)
    assert out[0] == ("cpu", "gloo", 7.5 * 60) and out[1] == ("cpu", "gloo", 7.5 * 60)


def test_the_default_is_generous_and_one_process_joins_nothing(monkeypatch):
    assert compose_config([]).distributed.timeout_min == DEFAULT_TIMEOUT_MIN == 60
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("SLURM_NTASKS", raising=False)
    assert init_from_env("cpu", 5.0) is None
