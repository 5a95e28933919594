"""SIGTERM / SIGINT / SIGUSR2 as a flag the training loop checks after each step, and the
exception that says a run stopped on one after writing its checkpoint.

USR2 is the scheduler's warning that the time limit is near: `conf/hydra/launcher/slurm.yaml`
asks SLURM for it ``signal_delay_s`` before the limit, and submitit installs a handler for it
that requeues the job and exits at once. Left to that handler the run would exit mid-epoch
without a checkpoint, so the run traps USR2 like TERM (finish the step, write the
checkpoint) and then hands the signal on to the handler it displaced
(:meth:`Interrupted.pass_on`): submitit requeues the job, which resumes from that checkpoint.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from sdclr.errors import SdclrError


def signal_name(signum: int | None) -> str:
    """``SIGTERM``, ``SIGUSR2``, ...; ``signal`` when none is known."""
    return signal.Signals(signum).name if signum else "signal"


def requeue_signals() -> tuple[signal.Signals, ...]:
    """The signals that mean "time is nearly up, checkpoint and requeue": USR2, and the one
    ``SUBMITIT_PREEMPT_SIGNAL`` names when submitit is told to use another."""
    found = [signal.SIGUSR2]
    other = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
    if isinstance(other, signal.Signals) and other not in (signal.SIGKILL, signal.SIGSTOP):
        found.append(other)
    return tuple(dict.fromkeys(found))


class Interrupted(SdclrError):
    """SIGTERM / SIGINT / SIGUSR2 arrived; a checkpoint was written and the run can be
    resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        # for a requeue signal: the Python handler the run's trap displaced (submitit's)
        self.displaced: Callable[[int, Any], Any] | None = None

    def pass_on(self) -> None:
        """Call the handler the run displaced for this signal, when it is a requeue signal
        and that handler is a Python function (submitit's, which requeues the job and exits,
        or raises when it will not requeue); otherwise nothing happens."""
        if callable(self.displaced):
            self.displaced(self.signum, None)


class StopSignal:
    """Turns SIGTERM / SIGINT / SIGUSR2 into a flag the training loop checks after each step,
    so the loop can write a consistent checkpoint before exiting. An :class:`Interrupted`
    leaving the block on a requeue signal carries the handler the block displaced."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT, *requeue_signals()):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if isinstance(exc, Interrupted) and exc.signum in requeue_signals():
            exc.displaced = self._previous.get(exc.signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None
