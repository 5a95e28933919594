"""sdclr.models.checkpoint: durable writes (fsync, the previous checkpoint kept, a full disk
refused cleanly) and safe loads (weights only: a crafted pickle runs nothing)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdclr.errors import CheckpointError
from sdclr.models.checkpoint import (
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)
from sdclr.utils.rng import restore_rng, rng_state

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "old_checkpoints"


def payload(epoch: int) -> dict:
    return {"model": {"w": torch.full((64, 64), float(epoch))}, "spec": {}, "epoch": epoch}


def test_each_write_keeps_the_one_before_and_syncs(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "pretrain.pt"
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    save_checkpoint(path, payload(1))
    assert load_checkpoint(path)["epoch"] == 1 and not previous_path(path).exists()
    save_checkpoint(path, payload(2))
    save_checkpoint(path, payload(3))
    assert load_checkpoint(path)["epoch"] == 3
    assert load_checkpoint(previous_path(path))["epoch"] == 2
    assert previous_path(path).name == "pretrain.prev.pt"
    assert len(synced) == 6  # the file and its directory, per write
    assert sorted(p.name for p in path.parent.iterdir()) == ["pretrain.prev.pt", "pretrain.pt"]


def test_an_unreadable_latest_falls_back_to_the_previous_and_does_not_displace_it(tmp_path, capsys):
    path = tmp_path / "pretrain.pt"
    save_checkpoint(path, payload(1))
    save_checkpoint(path, payload(2))
    path.write_bytes(path.read_bytes()[:100])  # a torn write
    found, source = load_latest(path)
    assert found["epoch"] == 1 and source == previous_path(path)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "cannot be read" in err and "(epoch 1)" in err
    save_checkpoint(path, payload(3))  # the torn latest is replaced, the good previous kept
    assert load_checkpoint(previous_path(path))["epoch"] == 1
    assert load_checkpoint(path)["epoch"] == 3


def test_a_missing_latest_beside_a_previous_one_falls_back(tmp_path):
    path = tmp_path / "pretrain.pt"
    save_checkpoint(path, payload(1))
    save_checkpoint(path, payload(2))
    path.unlink()  # a crash between the two renames
    found, source = load_latest(path)
    assert found["epoch"] == 1 and source == previous_path(path)
    assert load_latest(tmp_path / "none.pt") is None


def test_an_unreadable_latest_without_a_previous_is_an_error(tmp_path):
    path = tmp_path / "pretrain.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="is a text file .*, not a checkpoint"):
        load_latest(path)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(CheckpointError, match="starts with the bytes 89 50 4e 47"):
        load_latest(path)


DISK_FULL = """
import resource, signal, sys
import torch
from sdclr.errors import CheckpointError
from sdclr.models.checkpoint import save_checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
try:
    save_checkpoint(sys.argv[1], {"model": {"w": torch.zeros(200_000)}, "spec": {}, "epoch": 3})
except CheckpointError as e:
    print(e)
    sys.exit(2)
"""


def test_a_full_disk_leaves_both_checkpoints_as_they_were(tmp_path):
    path = tmp_path / "pretrain.pt"
    save_checkpoint(path, payload(1))
    save_checkpoint(path, payload(2))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    out = subprocess.run(
        [sys.executable, "-c", DISK_FULL, str(path)], capture_output=True, text=True
    )
    assert out.returncode == 2, out.stderr
    assert f"into {tmp_path}" in out.stdout and "bytes" in out.stdout
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "crafted.pt"
    torch.save({**payload(1), "extra": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="was refused.*posix.system"):
        load_checkpoint(path)
    assert not marker.exists()


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1)
    np.random.seed(2)
    gen = torch.Generator().manual_seed(3)
    path = tmp_path / "pretrain.pt"
    save_checkpoint(path, {**payload(1), "rng": rng_state(gen)})
    expected = (random.random(), np.random.rand(4), torch.rand(3, generator=gen))
    restore_rng(load_checkpoint(path)["rng"], gen)
    got = (random.random(), np.random.rand(4), torch.rand(3, generator=gen))
    assert got[0] == expected[0] and np.array_equal(got[1], expected[1])
    assert torch.equal(got[2], expected[2])


@pytest.mark.parametrize("name", ["interrupted.pt", "finished.pt"])
def test_checkpoints_written_before_the_change_still_load(name):
    """Their NumPy RNG state is an array (allowed); restoring it works."""
    old = load_checkpoint(FIXTURES / name)
    assert isinstance(old["rng"]["numpy"], tuple)
    restore_rng(old["rng"], torch.Generator())
