"""Running the sdclr command in a subprocess, for the end-to-end tests (tests/e2e): the tiny
settings of `make demo`, the call, and the exit-status check."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

# Same code path as `make demo`, shrunk: 2% of the data, narrow ResNet-18, few epochs.
TINY = [
    "data.fraction=0.02",
    "backbone.channels=[8,16,32,64]",
    "pretrain.epochs=2",
    "pretrain.batch_size=64",
    "pretrain.warmup_epochs=1",
    "linear.epochs=2",
    "linear.milestones=[1]",
    "fewshot.epochs=2",
    "fewshot.milestones=[1]",
    "smoke=true",
    "device=cpu",
]

# TINY at one epoch of everything (the sweeps' jobs)
ONE_EPOCH = [
    *[
        a
        for a in TINY
        if not a.startswith(("pretrain.epochs", "pretrain.warmup", "linear.", "few"))
    ],
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0",
    "linear.epochs=1",
    "linear.milestones=[1]",
    "fewshot.epochs=1",
    "fewshot.milestones=[1]",
]


def sdclr(args, env, timeout=600, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sdclr", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=cwd,
    )


def ok(out):
    assert out.returncode == 0, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def subprocess_env(data_root: Path, cache_dir: Path) -> dict[str, str]:
    """The environment of a subprocess run on the real data (the ``env`` fixture's, and
    that of the module-scoped reference runs, which cannot use a per-test fixture)."""
    e = dict(os.environ)
    e.update(
        SDCLR_DATA=str(data_root),
        SDCLR_CACHE=str(cache_dir),
        PYTHONUNBUFFERED="1",
        WANDB_SILENT="true",
        HYDRA_FULL_ERROR="0",
    )
    e.pop("WANDB_API_KEY", None)
    return e


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def seen_while_running(
    proc: subprocess.Popen, paths: list[Path], line: re.Pattern, timeout: float
) -> bool:
    """Wait until every file in ``paths`` holds a match of ``line``; True when they were read
    while ``proc`` was still running (what was read was written before it ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [read(p) for p in paths]
        running = proc.poll() is None  # polled after the reads
        if all(line.search(t) for t in texts):
            return running
        if not running:
            return False
        time.sleep(0.5)
    raise AssertionError(f"no {line.pattern!r} in {timeout} s: {[read(p)[-2000:] for p in paths]}")
