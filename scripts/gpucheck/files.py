"""Step 8, ``files``: the 224-px file path (nvJPEG decoding plus both views against the
DataLoader + PIL baseline, the bench's ``loading_224`` row) and one short ``data=folder`` run
on a long-tailed tree of real CIFAR-10 images upscaled, which :func:`write_tree` writes in a
helper subprocess (``--write-tree``)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed
from gpucheck.jobs import job_metrics
from gpucheck.settings import FOLDER_RUN, FOLDER_WORK_S, PY, SCRIPT, TOY_FOLDER, TREE
from gpucheck.speed import bench_command, read_bench, run_bench


def files_commands(args: CommandArgs) -> list[list[str]]:
    """The tree's helper, the 224-px bench row, the data=folder run."""
    work = args.work
    tree = work / "tree"
    folder = [
        *(PY, "-m", "sdclr", "data=folder", f"data.root={tree}", "data.test_dir=test"),
        f"split.dir={work / 'splits'}",
        *("stage=all", "prune=p90", "logger=none", "smoke=true"),
        f"hydra.run.dir={work / 'jobs' / 'folder'}",
        *(TOY_FOLDER if args.dry else FOLDER_RUN),
        *args.extra,
    ]
    return [
        [PY, str(SCRIPT), "--write-tree", str(tree), "--tree-scale", args.scale],
        bench_command(args, "bench-224", "--rows", "loading_224"),
        folder,
    ]


def write_tree(root: Path, archive: Path, scale: str) -> dict[str, Any]:
    """(Helper subprocess.) ``root/train/<class>/*.jpg`` and ``root/test/<class>/*.jpg``: real
    CIFAR-10 images from the archive, upscaled to varied ImageNet-like sizes, long-tailed."""
    import io

    import numpy as np
    from PIL import Image

    counts, test_per_class, (lo, hi) = TREE[scale]
    order: list[str] = []  # the classes as the archive lists them (alphabetical)
    left: dict[tuple[str, str], int] = {}
    rng = np.random.default_rng(0)
    written = 0
    with tarfile.open(archive, "r|gz") as tar:  # one pass, in the archive's order
        for m in tar:
            parts = m.name.split("/")
            if len(parts) != 3 or not m.isfile() or parts[0] not in ("train", "test"):
                continue
            split, cls = parts[0], parts[1]
            if cls not in order:
                if split != "train" or len(order) == len(counts):
                    continue
                order.append(cls)
                left[("train", cls)] = counts[len(order) - 1]
                left[("test", cls)] = test_per_class
            if left.get((split, cls), 0) <= 0:
                continue
            left[(split, cls)] -= 1
            w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
            img = Image.open(io.BytesIO(tar.extractfile(m).read())).convert("RGB")
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            img.resize((w, h), Image.BICUBIC).save(folder / parts[2], quality=90)
            written += 1
            if len(order) == len(counts) and not any(left.values()):
                break
    return {"images": written, "train_counts": counts, "test_per_class": test_per_class}


def files_estimate(check: Check) -> float:
    """The 224-px bench (its start, the augmentation's compile at 224 px, a row) and the
    folder run (its start and its eager epochs and probes); the dry run runs them side by side."""
    c = check.costs
    bench = c.get("bench_start_s") + c.get("compile_s") + c.get("row_s")
    folder = c.get("run_start_s") + FOLDER_WORK_S
    return max(bench, folder) if check.dry else bench + folder


def step_files(check: Check) -> dict[str, Any]:
    tree_cmd, bench_cmd, folder_cmd = files_commands(check.command_args())
    for sub in ("tree", "splits", "jobs/folder"):
        shutil.rmtree(check.work / sub, ignore_errors=True)
    results: dict[str, Any] = {"tree": check.run_json("tree", tree_cmd)}
    if not check.cuda:
        results["nvjpeg"] = "not run: no CUDA device (the CPU loader workers decoded)"
    check.publish("files", results)
    try:
        if check.dry:  # toy sizes, the bench's numbers only plumbing: side by side
            bench_out = Path(bench_cmd[bench_cmd.index("--out") + 1])
            bench_out.parent.mkdir(parents=True, exist_ok=True)
            bench_out.unlink(missing_ok=True)  # an earlier check's file is not this one's
            outcomes = check.run_side_by_side([("bench-224", bench_cmd), ("folder", folder_cmd)])
            failed = [o for o in outcomes if isinstance(o, StepFailed)]
            bench = read_bench(bench_cmd, None)
            if bench and "loading_224" in bench:
                results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
            if failed:
                raise failed[0]
        else:
            bench = run_bench(check, "bench-224", bench_cmd)
            results["loading_224"] = {**bench["loading_224"], "table": bench["table"]}
            check.publish("files", results)
            check.run("folder", folder_cmd)
    except StepFailed as e:
        results["folder"] = job_metrics(check.work / "jobs" / "folder")
        raise StepFailed(str(e), results) from None
    results["folder"] = job_metrics(check.work / "jobs" / "folder")
    return results
