"""What a run says as it goes, on the console and in its job directory's ``run.log``.

A batch job (SLURM, ``nohup``, ``| tee``) has no terminal, so the progress bars
(:mod:`sdclr.utils.progress`) stay off; each finished epoch of the pretraining and of a probe
is then one line instead (:class:`sdclr.utils.progress.EpochLines` formats it), flushed as it
is written. Where each kind of line goes:

- progress lines (:func:`progress_line`): stdout, unless stdout and stderr are both terminals
  (the bars show the same there, so nothing is said twice); and ``run.log``;
- notes (:func:`note`): stdout and ``run.log``;
- warnings (:func:`warn`, one ``warning: ...`` line) and the error a run ends with (one
  ``error: ...`` line, :func:`append_to`): stderr and ``run.log``; Python warnings
  (``warnings.warn``, e.g. of W&B or torch) raised while the job runs reach ``run.log`` too.

``run.log`` is the file Hydra's job logging names after the job (``run``), in the job
directory. Hydra's root logger holds it open, but nothing of ours propagates there (its
console handler would print our lines a second time, on stdout): :func:`job_log` gives the
``sdclr.run`` logger a handler of its own on the job directory's ``run.log`` (also when
``resume.path`` names another directory than Hydra's), for the job's duration, so each job of
a multirun writes its own file as it goes. Only rank 0 opens it.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

#: the job directory's log, the name Hydra's job logging gives it (``<job name>.log``)
LOG_FILE = "run.log"

_LOG = logging.getLogger("sdclr.run")
_LOG.propagate = False  # Hydra's root handlers would print it on stdout again
_LOG.setLevel(logging.INFO)
_LOG.addHandler(logging.NullHandler())  # no job log open: no file, and not logging's lastResort
_FORMAT = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


def lines_on_stdout() -> bool:
    """Whether progress lines are printed: unless stdout and stderr are both terminals, where
    the bars (on stderr) show the same."""
    return not (_is_terminal(sys.stdout) and _is_terminal(sys.stderr))


def progress_line(line: str) -> None:
    """One progress line (an epoch's): on stdout when :func:`lines_on_stdout`, and in the
    job's ``run.log``."""
    if lines_on_stdout():
        print(line, flush=True)
    _LOG.info(line)


def note(message: str) -> None:
    """A line the run says on stdout (what is switched off, skipped, evaluated), also in
    ``run.log``."""
    print(message, flush=True)
    _LOG.info(message.strip("\n"))


def warn(message: str) -> None:
    """One ``warning: message`` line on stderr, also in ``run.log``."""
    line = f"warning: {message}"
    print(line, file=sys.stderr, flush=True)
    _LOG.warning(line)


@contextmanager
def job_log(job_dir: Path | str, enabled: bool = True) -> Iterator[None]:
    """While open, the lines above (and Python warnings) are appended to
    ``job_dir/run.log``, each flushed as it is written. ``enabled=False`` (ranks other than 0)
    writes nothing; a log that cannot be opened is left out, the run goes on."""
    if not enabled:
        yield
        return
    try:
        handler = logging.FileHandler(Path(job_dir) / LOG_FILE, mode="a", encoding="utf-8")
    except OSError:
        yield
        return
    handler.setFormatter(_FORMAT)
    _LOG.disabled = False  # a job_logging config with disable_existing_loggers: true
    _LOG.addHandler(handler)
    shown = warnings.showwarning

    def showwarning(message: Any, category: type, filename: str, lineno: int, *args: Any) -> None:
        shown(message, category, filename, lineno, *args)  # stderr, as always
        _LOG.warning(f"warning: {category.__name__}: {message} ({filename}:{lineno})")

    warnings.showwarning = showwarning
    try:
        yield
    finally:
        if warnings.showwarning is showwarning:
            warnings.showwarning = shown
        _LOG.removeHandler(handler)
        handler.close()


def append_to(job_dir: Path | str, line: str, level: int = logging.ERROR) -> None:
    """Append ``line`` to ``job_dir/run.log`` after the job's log closed (the ``error:`` or
    ``interrupted:`` line a run ends with, printed by the caller); a directory that cannot
    take it is left alone."""
    with job_log(job_dir):
        _LOG.log(level, line)
