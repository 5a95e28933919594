"""The CPU allocator setting: a freed large tensor's pages are reused, not faulted in again."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

# A step's pattern in small: allocate and touch a 64 MiB and a 32 MiB tensor (SimCLR's stage-1
# activations at B=128 and 64), free both, again. With glibc's default each block is mmapped
# anew and all its pages fault in again, every round. With freed memory kept, the heap settles
# after a few rounds (torch's 64-byte-aligned requests cannot reuse an exact-size free chunk
# until neighbours coalesce) and later rounds fault in next to nothing.
_PROBE = textwrap.dedent(
    """
    import resource, sys, torch
    from sdclr.utils.memory import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else False
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds = []
    for _ in range(16):
        before = faults()
        a, b = torch.ones(16 * 2**20), torch.ones(8 * 2**20)
        rounds.append(faults() - before)
        del a, b
    print(int(applied), sum(rounds[-4:]))
    """
)
PAGES = 4 * 24 * 2**20 * 4 // 4096  # the last four rounds' pages


def _probe(mode: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    ).stdout.split()
    return bool(int(out[0])), int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_large_blocks_are_reused_not_faulted_in_again() -> None:
    applied, kept_faults = _probe("keep")
    if not applied:
        pytest.skip("not glibc: keep_freed_memory() is a no-op here")
    _, default_faults = _probe("default")
    # default: the blocks fault in again (transparent huge pages would lower this: only half)
    assert default_faults > PAGES // 2, default_faults
    # kept: their pages reused; a few faults of unrelated bookkeeping at most
    assert kept_faults < PAGES // 20, kept_faults


def test_opt_out_leaves_the_allocator_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdclr.utils.memory import keep_freed_memory

    monkeypatch.setenv("SDCLR_DEFAULT_MALLOC", "1")
    assert keep_freed_memory() is False
