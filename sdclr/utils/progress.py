"""Progress bars that stay quiet when output is not a terminal (logs, CI, sweeps), and the
epoch lines that take their place there (:class:`EpochLines`, :mod:`sdclr.utils.runlog`)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

from sdclr.utils.runlog import progress_line


def progress_bar(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    enabled: bool = True,
    leave: bool = False,
    **kwargs: Any,
) -> tqdm:
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=leave,
        dynamic_ncols=True,
        disable=not (enabled and sys.stderr.isatty()),
        **kwargs,
    )


#: how each field of an epoch line is written; others with ``.4g``
_FIELD_FORMATS = {"loss": ".4f", "lr": ".4g", "mask": ".3f", "val": ".2f", "knn": ".2f"}


def _field(key: str, value: float) -> str:
    fmt = _FIELD_FORMATS.get(key, ".4g")
    if fmt.endswith("f") and math.isfinite(value) and abs(value) >= 1e5:
        fmt = ".4g"  # a runaway probe loss reads 2.747e+06, not 2747473.9200
    return f"{key} {value:{fmt}}"


def _clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour."""
    s = int(round(seconds))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


class EpochLines:
    """The one place an epoch line is formatted: one line per finished epoch of a stage,
    for a run without a terminal (:mod:`sdclr.utils.runlog` says where it goes), e.g.
    ``pretrain epoch 3/4  loss 5.9561  lr 0.0375  mask 0.100  812 img/s  elapsed 0:21  eta 0:07``.

    ``done`` epochs were finished before this process (a resumed run); elapsed time counts
    from this object's creation, and the ETA is the remaining epochs at the mean epoch time so
    far (of this process). ``enabled=False`` (quiet callers, ranks other than 0) says nothing.
    """

    def __init__(self, stage: str, total: int, done: int = 0, enabled: bool = True):
        self.stage, self.total, self.first, self.enabled = stage, int(total), int(done), enabled
        self.start = time.monotonic()

    def line(self, epoch: int, images: int, seconds: float, **fields: float | None) -> str:
        """The line of finished (1-based) ``epoch``: ``fields`` in order (None ones left out),
        then ``images`` over ``seconds`` (the epoch's training), elapsed time and ETA."""
        elapsed = time.monotonic() - self.start
        ran = epoch - self.first
        parts = [f"{self.stage} epoch {epoch}/{self.total}"]
        parts += [_field(k, float(v)) for k, v in fields.items() if v is not None]
        if seconds > 0:
            parts.append(f"{images / seconds:.0f} img/s")
        parts.append(f"elapsed {_clock(elapsed)}")
        if ran > 0:
            parts.append(f"eta {_clock(elapsed / ran * (self.total - epoch))}")
        return "  ".join(parts)

    def __call__(self, epoch: int, images: int, seconds: float, **fields: float | None) -> None:
        if self.enabled:
            progress_line(self.line(epoch, images, seconds, **fields))
