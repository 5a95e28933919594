#!/usr/bin/env python
"""A torch / oneDNN bug on the CPU, reduced to one op: the weight gradient of a strided 1x1
convolution in channels_last with few input channels and an odd batch, on more than one
thread, writes out of bounds ("double free or corruption", "free(): invalid next size" or a
segmentation fault, at once or at the next allocation).

    python scripts/onednn_strided_pointwise_crash.py            # the table below, this machine
    python scripts/onednn_strided_pointwise_crash.py --case 3 8 16 32 cl f32   # one case

Each case runs in its own process (a crash takes the process with it), with
MALLOC_CHECK_=3 so that a corrupted heap is reported at the next free. Seen on torch 2.13.0
(CPU build) and 2.14.1 (CUDA build, oneDNN 3.12.0) on a 2-core Intel Xeon with AVX-512
(avx512_fp16): every float32 case with 8 input channels crashes, 16 or more do not, batch 1,
2 or 4 do not, contiguous (NCHW) tensors do not, one thread does not, and oneDNN capped at
AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``) does not. bf16 crashes too when oneDNN is capped at
AVX512_CORE or AVX512_CORE_BF16 (the kernels of AMD EPYC and older Xeons), not with the
machine's own avx512_fp16 kernels. A CIFAR-stem ResNet-18 at the suite's test widths
(``backbone.channels=[8,16,32,64]``) has this conv (the first downsample shortcut, 8 -> 16),
and inductor lays convolutions out channels_last, so a compiled SDCLR step with an odd batch
(the last batch of an epoch) crashed; SimCLR's one pass of 2B views never has an odd batch.

The suite works around it in :class:`sdclr.models.backbone.BranchConv2d` (``unit_stride``:
the same values as a stride-1 conv of every s-th pixel), on the CPU whenever channels_last or
compile is on; ``--workaround`` runs the cases that way.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CASES = [  # batch, in channels, out channels, input size, memory format, dtype
    (3, 8, 16, 32, "cl", "f32"),
    (47, 8, 16, 32, "cl", "f32"),
    (4, 8, 16, 32, "cl", "f32"),
    (3, 16, 32, 16, "cl", "f32"),
    (3, 64, 128, 32, "cl", "f32"),
    (3, 8, 16, 32, "nchw", "f32"),
    (3, 8, 16, 32, "cl", "bf16"),
]


def run_case(batch: int, cin: int, cout: int, size: int, fmt: str, dtype: str, workaround: bool):
    """The op itself, ten times (a corrupted heap may only fail at a later allocation)."""
    import torch
    import torch.nn.functional as F

    memory = torch.channels_last if fmt == "cl" else torch.contiguous_format
    dt = torch.bfloat16 if dtype == "bf16" else torch.float32
    for _ in range(10):
        x = torch.randn(batch, cin, size, size, dtype=dt).to(memory_format=memory)
        w = torch.randn(cout, cin, 1, 1, dtype=dt, requires_grad=True)
        if workaround:
            y = F.conv2d(x[:, :, ::2, ::2], w)
        else:
            y = F.conv2d(x, w, stride=2)
        y.backward(torch.randn_like(y))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", nargs=6, metavar=("B", "CIN", "COUT", "HW", "FMT", "DTYPE"))
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each case")
    parser.add_argument("--workaround", action="store_true", help="slice, then stride 1")
    args = parser.parse_args()
    if args.case:
        b, cin, cout, hw, fmt, dtype = args.case
        run_case(int(b), int(cin), int(cout), int(hw), fmt, dtype, args.workaround)
        print("ok")
        return 0
    import torch

    onednn = next(
        (line.strip() for line in torch.__config__.show().splitlines() if "DNN" in line), "?"
    )
    print(f"torch {torch.__version__}; {onednn}; {args.threads} threads")
    print(f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '(not set)')}")
    print("| batch | in | out | size | format | dtype | result |")
    print("|---:|---:|---:|---:|---|---|---|")
    crashed = 0
    for case in CASES:
        env = dict(os.environ, MALLOC_CHECK_="3", OMP_NUM_THREADS=str(args.threads))
        cmd = [sys.executable, __file__, "--case", *map(str, case)]
        cmd += ["--workaround"] if args.workaround else []
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode == 0:
            result = "ok"
        else:
            crashed += 1
            last = (proc.stderr.strip().splitlines() or [""])[-1][:60]
            result = f"**crash** (exit {proc.returncode}) {last}"
        print("| " + " | ".join(map(str, case)) + f" | {result} |", flush=True)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
