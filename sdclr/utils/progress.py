"""Progress bars that stay quiet when output is not a terminal (logs, CI, sweeps)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm


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
