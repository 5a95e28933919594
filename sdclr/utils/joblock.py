"""One writer per job directory: an exclusive lock held for a run's lifetime.

The lock is ``fcntl.flock`` on ``<job>/.lock``, which the kernel releases when its holder
exits in any way (SIGKILL and crashes included), so a stale lock of a dead process never
blocks a rerun on the same host. The file says who holds it (pid, host, start time) for the
message a second run stops with; it stays in the directory, emptied, after release.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sdclr.errors import JobBusyError

LOCK_NAME = ".lock"


def holder(job_dir: Path) -> dict | None:
    """Who holds ``job_dir``'s lock now, or None when nobody does."""
    path = Path(job_dir) / LOCK_NAME
    if not path.is_file():
        return None
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read(path)
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def busy_message(job_dir: Path, info: dict) -> str:
    since = info.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return (
        f"the job directory {job_dir} is in use by another run (pid {info.get('pid', '?')} on "
        f"host {info.get('host', '?')}, since {when}); wait for it to end or stop it, or "
        f"choose another hydra.run.dir"
    )


class JobLock:
    """``with JobLock(job_dir):`` holds the directory or raises :class:`JobBusyError`."""

    def __init__(self, job_dir: Path):
        self.job_dir = Path(job_dir)
        self.path = self.job_dir / LOCK_NAME
        self._file = None

    def acquire(self) -> None:
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise JobBusyError(busy_message(self.job_dir, _read(self.path))) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(info))
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is None:
            return
        self._file.seek(0)
        self._file.truncate()
        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
        self._file = None

    def __enter__(self) -> JobLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
