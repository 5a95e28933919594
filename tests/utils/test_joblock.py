"""sdclr.utils.joblock: one writer per job directory, released however the holder ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from sdclr.errors import JobBusyError
from sdclr.utils.joblock import LOCK_NAME, JobLock, holder

HOLD = """
import sys, time
from sdclr.utils.joblock import JobLock
lock = JobLock(sys.argv[1]); lock.acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_in_child(job_dir) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(job_dir)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_is_exclusive_and_names_its_holder(tmp_path):
    proc = hold_in_child(tmp_path)
    try:
        info = holder(tmp_path)
        assert info["pid"] == proc.pid and info["host"] == socket.gethostname()
        with pytest.raises(JobBusyError, match=f"pid {proc.pid} on host {socket.gethostname()}"):
            JobLock(tmp_path).acquire()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    proc = hold_in_child(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (tmp_path / LOCK_NAME).read_text()  # the dead holder's record is still there
    assert holder(tmp_path) is None
    with JobLock(tmp_path) as lock:
        assert holder(tmp_path) is None or holder(tmp_path)["pid"] == os.getpid()
        assert lock.path.read_text()
    assert holder(tmp_path) is None and (tmp_path / LOCK_NAME).read_text() == ""


def test_release_lets_the_next_run_in(tmp_path):
    with JobLock(tmp_path):
        pass
    t0 = time.time()
    with JobLock(tmp_path):
        pass
    assert time.time() - t0 < 5
