"""SIGTERM / SIGINT as a flag the training loop checks after each step, and the exception that
says a run stopped on one after writing its checkpoint."""

from __future__ import annotations

import signal
from typing import Any

from sdclr.errors import SdclrError


class Interrupted(SdclrError):
    """SIGTERM / SIGINT arrived; a checkpoint was written and the run can be resumed."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag the training loop checks after each step, so the
    loop can write a consistent checkpoint before exiting."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.signum is not None
