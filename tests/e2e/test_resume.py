"""Nothing lost: resume after SIGKILL / SIGTERM / SIGUSR2 (at fixed and random points of
pretraining, and during a probe), and a requeue by submitit after SLURM's USR2 warning, give
the uninterrupted result; config drift, non-finite losses and failing sweep jobs are handled
without touching earlier results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from runs import TINY, ok, sdclr, subprocess_env

# four epochs with a checkpoint after each, so an interruption lands between checkpoints
RUN = [*TINY, "pretrain.epochs=4", "pretrain.batch_size=32", "checkpoint.every=1", "stage=all"]


def final_state(job: Path):
    ckpt = torch.load(job / "checkpoints" / "pretrain.pt", weights_only=False)
    return ckpt["model"], json.loads((job / "metrics.json").read_text())


def assert_same_result(a: Path, b: Path):
    model_a, metrics_a = final_state(a)
    model_b, metrics_b = final_state(b)
    assert model_a.keys() == model_b.keys()
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k
    assert metrics_a["pretrain"]["epoch_loss"] == metrics_b["pretrain"]["epoch_loss"]
    assert metrics_a["pretrain"]["mask_density"] == metrics_b["pretrain"]["mask_density"]
    for stage in ("linear", "fewshot"):
        assert metrics_a[stage]["per_class"] == metrics_b[stage]["per_class"]
        assert metrics_a[stage]["acc"] == metrics_b[stage]["acc"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root, cache_dir):
    env = subprocess_env(data_root, cache_dir)
    job = tmp_path_factory.mktemp("ref") / "job"
    ok(sdclr([*RUN, f"hydra.run.dir={job}"], env))
    return job


def start(job: Path, env) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sdclr", *RUN, f"hydra.run.dir={job}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_epoch(job: Path, proc: subprocess.Popen, epoch: int, timeout: float = 300):
    """Poll the job's checkpoint until it records ``epoch`` finished epochs."""
    ckpt = job / "checkpoints" / "pretrain.pt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        if ckpt.is_file():
            try:
                if torch.load(ckpt, weights_only=False)["epoch"] >= epoch:
                    return
            except Exception:
                pass  # being replaced right now
        time.sleep(0.02)
    raise AssertionError("no checkpoint in time")


def test_sigkill_at_an_arbitrary_step_then_resume_gives_the_same_result(reference, tmp_path, env):
    job = tmp_path / "job"
    proc = start(job, env)
    wait_for_epoch(job, proc, 1)
    time.sleep(0.3)  # somewhere inside epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(job / "checkpoints" / "pretrain.pt", weights_only=False)["epoch"] < 4
    out = ok(sdclr([*RUN, f"hydra.run.dir={job}"], env))
    assert "pretrain" in out.stdout
    assert json.loads((job / "metrics.json").read_text())["pretrain"]["resumed"] is True
    assert_same_result(reference, job)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2], ids=["SIGTERM", "SIGUSR2"])
def test_a_stop_signal_checkpoints_mid_epoch_and_resumes_exactly(sig, reference, tmp_path, env):
    """SIGTERM (preemption, scancel) and SIGUSR2 (SLURM's warning before the time limit,
    conf/hydra/launcher/slurm.yaml; without submitit nobody requeues, so it stops like TERM)."""
    job = tmp_path / "job"
    proc = start(job, env)
    wait_for_epoch(job, proc, 1)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + sig, err
    assert f"{sig.name} received" in err and "resume" in err and "Traceback" not in err
    status = json.loads((job / "status.json").read_text())
    assert status["status"] == "interrupted"
    ckpt = torch.load(job / "checkpoints" / "pretrain.pt", weights_only=False)
    assert ckpt["finished"] is False
    out = ok(sdclr([*RUN, f"hydra.run.dir={job}"], env))
    assert "pretrain" in out.stdout
    assert json.loads((job / "metrics.json").read_text())["pretrain"]["resumed"] is True
    assert_same_result(reference, job)


def test_usr2_under_submitit_checkpoints_then_requeues_and_the_job_resumes(
    reference, tmp_path, env
):
    """The SLURM path (conf/hydra/launcher/slurm.yaml) with submitit's local executor: the
    same launcher, job pickle, USR2 handler and checkpoint-and-requeue protocol, with the
    local controller restarting the task where SLURM would requeue it (no cluster here). The
    sweep directory has a microsecond timestamp, so a task that composed its job directory
    anew (at its own start, or at the requeue) would miss the checkpoint."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root = tmp_path / "sweep"
    master = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sdclr",
            "-m",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={root}/${{sdclr_now:%H-%M-%S-%f}}",
            *RUN,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )

    def job_dir() -> Path | None:
        found = list(root.glob("*/0_*/checkpoints"))
        return found[0].parent if found else None

    wait_until(master, lambda: job_dir() is not None)
    job = job_dir()
    wait_for_epoch(job, master, 1)
    task = json.loads((job / ".lock").read_text())["pid"]  # the submitit task running the job
    os.kill(task, signal.SIGUSR2)
    out, err = master.communicate(timeout=600)
    assert master.returncode == 0, (out[-3000:], err[-3000:])
    assert [p.name for p in root.iterdir()] == [job.parent.name]  # the master's sweep dir
    logs = "".join(p.read_text() for p in job.parent.glob(".submitit/*/*_0_log.*"))
    interrupted = [line for line in logs.splitlines() if line.startswith("interrupted:")]
    assert len(interrupted) == 1 and "SIGUSR2 received: stopped at epoch" in interrupted[0]
    assert "Calling checkpoint method" in logs and "Requeued job" in logs
    assert logs.count("Starting with JobEnvironment") >= 2  # the task ran again
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["pretrain"]["resumed"] is True
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert_same_result(reference, job)


def wait_until(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the run did not get there in time"
        time.sleep(0.02)


def epochs_done(job: Path) -> int:
    try:
        return int(torch.load(job / "checkpoints" / "pretrain.pt", weights_only=False)["epoch"])
    except Exception:  # not there yet, or being replaced right now
        return -1


def in_probe(job: Path) -> bool:
    try:
        status = json.loads((job / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("stage") == "linear" and status.get("status") == "running"


@pytest.mark.parametrize("seed", [11, 12])
def test_sigkill_at_a_random_point_of_pretraining_then_resume(seed, reference, tmp_path, env):
    import random

    draw = random.Random(seed)
    epoch, delay = draw.randint(0, 2), draw.uniform(0.0, 0.6)
    job = tmp_path / "job"
    proc = start(job, env)
    wait_until(proc, lambda: epochs_done(job) >= epoch if epoch else (job / ".lock").is_file())
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ok(sdclr([*RUN, f"hydra.run.dir={job}"], env))
    assert_same_result(job, reference)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_signal_during_a_probe_then_resume(sig, reference, tmp_path, env):
    job = tmp_path / "job"
    proc = start(job, env)
    wait_until(proc, lambda: in_probe(job))
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
        assert "interrupted:" in err and "probe" in err
        assert json.loads((job / "status.json").read_text())["status"] == "interrupted"
    else:
        assert proc.returncode == -signal.SIGKILL
    again = ok(sdclr([*RUN, f"hydra.run.dir={job}"], env))
    assert "pretrain: already finished" in again.stdout  # the probe alone is redone
    assert_same_result(job, reference)


def test_rerun_skips_finished_stages_and_refuses_config_drift(reference, tmp_path, env):
    before = (reference / "metrics.json").read_bytes()
    out = ok(sdclr([*RUN, f"hydra.run.dir={reference}"], env))
    for stage in ("pretrain", "linear", "fewshot"):
        assert f"{stage}: already finished" in out.stdout
    assert (reference / "metrics.json").read_bytes() == before
    out = sdclr([*RUN, "pretrain.lr=0.1", f"hydra.run.dir={reference}"], env)
    assert out.returncode == 2
    assert "pretrain.lr: 0.5 -> 0.1" in out.stderr and "resume.force=true" in out.stderr
    assert (reference / "metrics.json").read_bytes() == before
    assert json.loads((reference / "status.json").read_text())["status"] == "completed"
    # bad input in a finished job's directory leaves its files alone
    out = sdclr(
        [*RUN, f"hydra.run.dir={reference}"], dict(env, SDCLR_DATA=str(tmp_path / "nowhere"))
    )
    assert out.returncode == 2 and "does not exist" in out.stderr
    assert (reference / "metrics.json").read_bytes() == before
    assert json.loads((reference / "status.json").read_text())["status"] == "completed"
    out = ok(
        sdclr([*RUN, "pretrain.lr=0.1", "resume.force=true", f"hydra.run.dir={reference}"], env)
    )
    assert "pretrain.lr" in out.stderr  # forced: the differences are still listed


def test_resume_path_continues_another_directory(reference, tmp_path, env):
    out = ok(sdclr([*RUN, f"resume.path={reference}", f"hydra.run.dir={tmp_path / 'x'}"], env))
    assert "already finished" in out.stdout


def test_non_finite_loss_stops_without_a_result(tmp_path, env):
    job = tmp_path / "job"
    out = sdclr([*RUN, "pretrain.lr=1e30", "pretrain.warmup_epochs=0", f"hydra.run.dir={job}"], env)
    assert out.returncode == 2, out.stderr
    assert "loss became" in out.stderr and "epoch" in out.stderr and "lr" in out.stderr
    assert "Traceback" not in out.stderr
    metrics = job / "metrics.json"
    assert not metrics.exists() or "pretrain" not in json.loads(metrics.read_text())
    assert json.loads((job / "status.json").read_text())["status"] == "failed"


def test_a_failing_sweep_job_does_not_stop_the_others(tmp_path, env):
    sweep = tmp_path / "sweep"
    out = sdclr(
        [
            "-m",
            "pretrain.batch_size=32,100000",
            *[a for a in RUN if "batch_size" not in a and "epochs=4" not in a],
            f"hydra.sweep.dir={sweep}",
        ],
        env,
        timeout=900,
    )
    assert out.returncode == 1 and "1 job(s) failed" in out.stderr
    report = subprocess.run(
        [sys.executable, "-m", "sdclr.report", str(sweep)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert report.returncode == 0, report.stderr
    summary = json.loads((sweep / "report.json").read_text())
    assert summary["counts"]["failed"] == 1 and summary["counts"]["completed"] == 1
    assert "pretrain.batch_size" in report.stdout and "failed" in report.stdout


def test_unwritable_output_directory_is_one_clear_error(tmp_path, env):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    out = sdclr([*TINY, f"hydra.run.dir={blocker}/job"], env)
    assert out.returncode != 0
    assert "cannot create the output directory" in out.stderr and "is not a directory" in out.stderr
    assert "Traceback" not in out.stderr
