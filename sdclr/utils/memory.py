"""Host allocator settings for training on the CPU.

glibc's malloc serves every block of 32 MiB or more (its dynamic mmap threshold's ceiling)
with a fresh ``mmap`` and returns it to the kernel on ``free``. A CPU training step allocates
and frees the same large activations every step (SimCLR's 2B-image batch at full width: 64 MiB
per stage-1 activation at B=128), so each step page-faults all of them in again, zeroed by the
kernel: SimCLR's epoch took 1.4-1.7x as long with the default allocator as with the
settings below (BENCHMARKS.md, "CPU allocator", with its command and device). Keeping freed
memory in the process makes the second step reuse the pages of the first. The cost is a
resident set that stays at the step's peak, which a training process reaches anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_OPT_OUT_ENV = "SDCLR_DEFAULT_MALLOC"


def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse instead of unmapping them.

    No ``mmap`` for large blocks (``M_MMAP_MAX=0``) and no trimming of the heap's top
    (``M_TRIM_THRESHOLD`` at its maximum). Returns True when applied; False on a platform
    without glibc (macOS, Windows, musl) or when ``SDCLR_DEFAULT_MALLOC=1`` asks for the
    allocator's defaults. Process-wide and idempotent.
    """
    if os.environ.get(_OPT_OUT_ENV, "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    libc = _glibc()
    if libc is None:
        return False
    mmap_off = libc.mallopt(_M_MMAP_MAX, 0) == 1
    trim_off = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return mmap_off and trim_off


def _glibc() -> ctypes.CDLL | None:
    """The process's C library when it is glibc (musl has no ``mallopt``)."""
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return None
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
