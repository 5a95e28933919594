#!/usr/bin/env python
"""Exercise every CUDA-only path of the suite once, and time it (``make gpu-check``).

Steps (``--steps``, comma-separated; default all, in this order):

* ``tests``:  the tests that need CUDA (augmentation on the device without host syncs, nvJPEG
  decoding against the CPU decoder), ``pytest -m`` free: they skip themselves on CPU;
* ``bench``:  ``python -m sdclr.bench`` (the speed table of BENCHMARKS.md) into ``--out``;
* ``graphs``: the same bench with the model compiled in ``reduce-overhead`` mode (CUDA graphs),
  to see whether graphs close the gap of SDCLR's two branch passes to the one-pass ceiling;
* ``cifar``:  SDCLR p90 on CIFAR-10-LT split 1, ``stage=all``, a short schedule on the GPU
  (bf16, channels_last, torch.compile, GPU-resident data, probes on the GPU);
* ``folder``: ``data=folder`` at 224 px on a long-tailed tree of JPEGs written from CIFAR-10
  (upscaled to 320-500 px), decoded per batch by nvJPEG, then the same with the resized cache.

The data: ``SDCLR_DATA`` must hold ``cifar10-jpg.tar.gz`` and ``cifar10-train-labels.npy``
(and ``tiny-imagenet-32.tar.gz`` for the nvJPEG test's image tree), as ``../shared/data`` does.

Each step's output goes to ``<out>/<step>.log``; ``<out>/gpu_check.json`` lists every step
with its exit status and wall time, and the command exits non-zero if one failed. Steps are
sized to fit one 10-minute call each on an H100.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

STEPS = ("tests", "bench", "graphs", "cifar", "folder")
NEEDED = ("cifar10-jpg.tar.gz", "cifar10-train-labels.npy", "tiny-imagenet-32.tar.gz")
SHORT = [
    "split=split1",
    "prune=p90",
    "logger=none",
    "pretrain.epochs=10",
    "pretrain.warmup_epochs=1",
    "linear.epochs=5",
    "linear.milestones=[3,4]",
    "fewshot.epochs=5",
    "fewshot.milestones=[3,4]",
    "smoke=true",
]
# 10 classes, 400 down to 12 images (after 5 validation images each, Many > 100, Medium
# 20-100 and Few < 20 are all present), 20 test images each
TREE_COUNTS = [400, 300, 200, 150, 110, 80, 50, 30, 18, 12]


def write_jpeg_tree(root: Path, counts: list[int], test_per_class: int = 20) -> None:
    """``root/train/<class>/*.jpg`` + ``root/test/<class>/*.jpg`` from CIFAR-10 images,
    upscaled to 320-500 px (ImageNet-like sizes and aspect ratios)."""
    import numpy as np
    from PIL import Image

    from sdclr.config.compose import compose_config
    from sdclr.data.arrays import load_arrays

    data = load_arrays(compose_config(["device=cpu"]))
    rng = np.random.default_rng(0)
    for split, x, y, want in (
        ("train", data.train_x, data.train_y, counts),
        ("test", data.test_x, data.test_y, [test_per_class] * len(counts)),
    ):
        for c, n in enumerate(want):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(y == c)[:n]:
                w, h = (int(v) for v in rng.integers(320, 501, size=2))
                img = Image.fromarray(x[i].transpose(1, 2, 0)).resize((w, h), Image.BICUBIC)
                img.save(folder / f"{i:05d}.jpg", quality=90)


def commands(step: str, out: Path, extra: list[str]) -> list[list[str]]:
    py = sys.executable
    if step == "tests":
        return [[py, "-m", "pytest", "-q", "-rs", "tests", "-k", "cuda or nvjpeg"]]
    if step == "bench":
        return [[py, "-m", "sdclr.bench", "--out", str(out / "bench.json")]]
    if step == "graphs":
        return [
            [
                py,
                "-m",
                "sdclr.bench",
                "--compile-mode",
                "reduce-overhead",
                "--out",
                str(out / "bench-reduce-overhead.json"),
            ]
        ]
    if step == "cifar":
        job = f"hydra.run.dir={out / 'cifar-job'}"
        return [[py, "-m", "sdclr", "stage=all", job, *SHORT, *extra]]
    if step == "folder":
        tree = out / "tree"
        common = [
            "data=folder",
            f"data.root={tree}",
            "data.test_dir=test",
            f"split.dir={out / 'splits'}",
            "backbone=resnet50",
            "pretrain.batch_size=256",
            "linear.batch_size=256",
            "fewshot.batch_size=256",
            "stage=all",
            *SHORT,
        ]
        common = [a.replace("pretrain.epochs=10", "pretrain.epochs=3") for a in common]
        return [
            [py, "-m", "sdclr", *common, f"hydra.run.dir={out / 'folder-nvjpeg-job'}", *extra],
            [
                py,
                "-m",
                "sdclr",
                *common,
                "data.cache_size=256",
                "compile=false",  # compiling ResNet-50 again would double the step's time
                f"data.cache_dir={out / 'cache'}",
                f"hydra.run.dir={out / 'folder-cache-job'}",
                *extra,
            ],
        ]
    raise SystemExit(f"unknown step {step!r}; choose from {', '.join(STEPS)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/gpu-check", help="where logs and jobs go")
    parser.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps")
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides appended to the runs (e.g. to try on CPU)"
    )
    args = parser.parse_args()
    data = Path(os.environ.get("SDCLR_DATA", "data"))
    missing = [f for f in NEEDED if not (data / f).is_file()]
    if missing:
        print(
            f"error: SDCLR_DATA={data} lacks {', '.join(missing)}; point SDCLR_DATA at a copy "
            f"of the shared data directory",
            file=sys.stderr,
        )
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    summary_path = out / "gpu_check.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    env = dict(os.environ)
    failed = False
    for step in [s.strip() for s in args.steps.split(",") if s.strip()]:
        t0, rc = time.perf_counter(), 0
        with open(out / f"{step}.log", "w") as log:
            if step == "folder" and not (out / "tree" / "train").is_dir():
                write_jpeg_tree(out / "tree", TREE_COUNTS)
            for cmd in commands(step, out, args.overrides):
                print(f"[{step}] {' '.join(cmd)}", flush=True)
                log.write(f"$ {' '.join(cmd)}\n")
                log.flush()
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
                if rc != 0:
                    break
        seconds = time.perf_counter() - t0
        summary[step] = {"returncode": rc, "seconds": round(seconds, 1)}
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(
            f"[{step}] {'ok' if rc == 0 else f'FAILED (exit {rc}), see {out / step}.log'} "
            f"in {seconds:.0f} s",
            flush=True,
        )
        failed |= rc != 0
    print(f"summary: {summary_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
