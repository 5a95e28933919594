"""Faults through the real runner on real CIFAR-10 (README "Resuming, interruptions and
errors", the reliability table): a truncated latest checkpoint, a full disk at checkpoint
time, a crafted checkpoint, two runs on one job directory, W&B failing, and bad data met in
the middle of a run (signals are in test_resume.py). Each either continues to the result an
uninterrupted run gives, or stops with one ``error:`` line and leaves what was there before
as it was."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import TINY, ok, sdclr, subprocess_env

# two epochs with a checkpoint after each: the previous checkpoint is epoch 1's
PRETRAIN = [*TINY, "stage=pretrain", "pretrain.batch_size=32", "checkpoint.every=1"]


def checkpoint(job: Path, name: str = "pretrain.pt") -> dict:
    return torch.load(job / "checkpoints" / name, weights_only=False)


def error_lines(out: subprocess.CompletedProcess) -> list[str]:
    return [line for line in out.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root, cache_dir):
    """A finished two-epoch pretraining: pretrain.pt (epoch 2) and pretrain.prev.pt (epoch 1)."""
    env = subprocess_env(data_root, cache_dir)
    job = tmp_path_factory.mktemp("faults") / "job"
    ok(sdclr([*PRETRAIN, f"hydra.run.dir={job}"], env))
    return job


def copy_job(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def truncate(path: Path, keep: int = 4096) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def test_a_run_keeps_the_previous_checkpoint(finished):
    assert checkpoint(finished)["epoch"] == 2 and checkpoint(finished)["finished"]
    assert checkpoint(finished, "pretrain.prev.pt")["epoch"] == 1
    assert not list((finished / "checkpoints").glob(".*tmp*"))  # no temporary file left


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(finished, tmp_path, env):
    job = copy_job(finished, tmp_path / "job")
    truncate(job / "checkpoints" / "pretrain.pt")
    out = ok(sdclr([*PRETRAIN, f"hydra.run.dir={job}"], env))
    warnings = [line for line in out.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, out.stderr
    assert "pretrain.pt cannot be read" in warnings[0] and "pretrain.prev.pt" in warnings[0]
    assert "(epoch 1)" in warnings[0]
    assert warnings[0] in (job / "run.log").read_text()  # and in the job's log
    # epoch 2 trained again from epoch 1's state: the uninterrupted run's weights, exactly
    again, reference = checkpoint(job)["model"], checkpoint(finished)["model"]
    assert again.keys() == reference.keys()
    assert all(torch.equal(again[k], reference[k]) for k in reference)
    metrics = json.loads((job / "metrics.json").read_text())["pretrain"]
    expected = json.loads((finished / "metrics.json").read_text())["pretrain"]
    assert metrics["epoch_loss"] == expected["epoch_loss"]


def _file_size_limit(limit: int):
    def apply() -> None:
        # a write past the limit fails with EFBIG (instead of the default SIGXFSZ kill), as
        # on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_at_checkpoint_time_stops_with_one_line_and_keeps_the_checkpoints(
    finished, tmp_path, env
):
    job = copy_job(finished, tmp_path / "job")
    truncate(job / "checkpoints" / "pretrain.pt")  # resume from epoch 1: one write to make
    before = {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()}
    metrics_before = (job / "metrics.json").read_bytes()
    size = (finished / "checkpoints" / "pretrain.pt").stat().st_size
    limit = size // 4  # room for the logs and status files, not for a checkpoint
    out = subprocess.run(
        [sys.executable, "-m", "sdclr", *PRETRAIN, f"hydra.run.dir={job}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=_file_size_limit(limit),
    )
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out)
    assert len(errors) == 1, out.stderr[-3000:]
    assert f"into {job / 'checkpoints'}" in errors[0] and "bytes" in errors[0]
    needed = int(errors[0].split("needs ")[1].split(" bytes")[0].replace(",", ""))
    assert needed > limit
    assert {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()} == before
    assert (job / "metrics.json").read_bytes() == metrics_before
    # with room again, the same command finishes from the previous checkpoint
    ok(sdclr([*PRETRAIN, f"hydra.run.dir={job}"], env))
    reference = checkpoint(finished)["model"]
    assert all(torch.equal(checkpoint(job)["model"][k], reference[k]) for k in reference)


class Evil:
    """Unpickling this would run a shell command that writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(finished, tmp_path, env):
    marker = tmp_path / "pwned"
    crafted = tmp_path / "crafted.pt"
    payload = checkpoint(finished)
    payload["spec"] = {**payload["spec"], "note": Evil(marker)}
    torch.save(payload, crafted)
    job = tmp_path / "eval"
    out = sdclr([*TINY, "stage=linear", f"stage.checkpoint={crafted}", f"hydra.run.dir={job}"], env)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out)
    assert len(errors) == 1 and "was refused" in errors[0] and "posix.system" in errors[0]
    assert str(crafted) in errors[0]
    assert not marker.exists()


def test_a_second_run_on_a_busy_job_directory_stops_at_once(finished, tmp_path, env):
    job = tmp_path / "job"
    args = [*TINY, "stage=pretrain", "pretrain.epochs=4", "pretrain.batch_size=32"]
    first = subprocess.Popen(
        [sys.executable, "-m", "sdclr", *args, f"hydra.run.dir={job}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        lock = job / ".lock"
        deadline = time.time() + 300
        while not (lock.is_file() and lock.read_text()):
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.05)
        second = sdclr([*args, f"hydra.run.dir={job}"], env, timeout=120)
        assert first.poll() is None, "the first run must still be running for this test"
        assert second.returncode == 2, second.stderr[-3000:]
        errors = error_lines(second)
        assert len(errors) == 1 and f"pid {first.pid}" in errors[0], second.stderr[-3000:]
        assert "in use by another run" in errors[0]
        # the second run wrote nothing into the first's job (no "failed" status)
        assert json.loads((job / "status.json").read_text())["status"] == "running"
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err[-3000:]
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    # the lock went with the run: the same command now starts (and finds the work done)
    ok(sdclr([*args, f"hydra.run.dir={job}"], env))


# --- W&B failing ---------------------------------------------------------------------------

# Injected into the subprocess through sitecustomize: W&B's client raises at start, or from
# its third log call on (a connection lost mid-run).
WANDB_FAULT = """
import os
fault = os.environ.get("SDCLR_TEST_WANDB_FAULT")
if fault:
    import wandb
    real_init = wandb.init

    def init(*args, **kwargs):
        if fault == "start":
            raise RuntimeError("injected: W&B is down")
        run = real_init(*args, **kwargs)
        calls = [0]
        real_log = run.log

        def log(*a, **k):
            calls[0] += 1
            if calls[0] > 2:
                raise ConnectionError("injected: W&B connection lost")
            return real_log(*a, **k)

        object.__setattr__(run, "log", log)
        return run

    wandb.init = init
"""


@pytest.mark.parametrize("fault", ["start", "midrun"])
def test_wandb_failing_never_changes_or_stops_a_run(fault, finished, tmp_path, env):
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(WANDB_FAULT)
    env = dict(
        env,
        SDCLR_TEST_WANDB_FAULT=fault,
        PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]),
        WANDB_MODE="offline",
    )
    job = tmp_path / "job"
    out = ok(sdclr([*PRETRAIN, "logger=wandb", "logger.mode=offline", f"hydra.run.dir={job}"], env))
    assert "injected" in out.stderr  # the failure was met, and said
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    got, want = checkpoint(job)["model"], checkpoint(finished)["model"]
    assert all(torch.equal(got[k], want[k]) for k in want)  # the same training as without W&B


# --- bad data met mid-run ----------------------------------------------------------------


def test_a_truncated_split_file_at_resume_is_one_line_and_keeps_the_checkpoint(tmp_path, env):
    """The split is read again when an interrupted run resumes: a split file damaged in
    between stops the run before it touches the job."""
    from sdclr.utils.io import SPLITS_DIR

    splits = tmp_path / "splits"
    shutil.copytree(SPLITS_DIR, splits)
    args = [
        *PRETRAIN,
        "split.source=generated",
        f"split.dir={splits}",
        f"hydra.run.dir={tmp_path / 'job'}",
    ]
    ok(sdclr(args, env))
    job = tmp_path / "job"
    truncate(job / "checkpoints" / "pretrain.pt")  # as if stopped during epoch 2
    damaged = splits / "cifar10" / "split1_if100_val500_fs45.npz"  # the first run wrote it
    truncate(damaged, 200)
    before = {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()}
    status = (job / "status.json").read_bytes()
    out = sdclr(args, env)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out)
    assert len(errors) == 1 and str(damaged) in errors[0], out.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in (job / "checkpoints").iterdir()} == before
    assert (job / "status.json").read_bytes() == status


def test_a_corrupt_image_met_by_a_probe_is_one_line_and_keeps_the_pretraining(
    tmp_path, data_root, env
):
    """Images of a folder are decoded per batch, so a file damaged after the scan is met in
    the middle of the run (here by the linear probe, after pretraining finished)."""
    from imagetree import SMALL_FOLDER_RUN, folder_args, write_tree

    tree = tmp_path / "tree"
    write_tree(tree, data_root / "tiny-imagenet-32.tar.gz", [30, 20, 12, 8], test_per_class=4)
    job = tmp_path / "job"
    args = [
        *folder_args(tree),
        f"split.dir={tmp_path / 'splits'}",
        *SMALL_FOLDER_RUN,
        "linear.epochs=1",
        "fewshot.epochs=1",
        "linear.eval_batch_size=64",
        "fewshot.eval_batch_size=64",
        "smoke=true",
        "device=cpu",
        f"hydra.run.dir={job}",
    ]
    ok(sdclr([*args, "stage=pretrain"], env))
    before = checkpoint(job)["model"]
    metrics = json.loads((job / "metrics.json").read_text())
    victim = sorted((tree / "val").rglob("*.JPEG"))[0]
    victim.write_bytes(b"\xff\xd8 not a jpeg any more")
    out = sdclr([*args, "stage=all"], env)
    assert out.returncode == 2, out.stderr[-3000:]
    errors = error_lines(out)
    assert len(errors) == 1 and victim.name in errors[0], out.stderr[-3000:]
    assert all(torch.equal(checkpoint(job)["model"][k], before[k]) for k in before)
    after = json.loads((job / "metrics.json").read_text())
    assert after["pretrain"] == metrics["pretrain"] and "linear" not in after
