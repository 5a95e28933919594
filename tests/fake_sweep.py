"""A fake Hydra multirun sweep for the report's tests: job dirs with metrics.json,
status.json and overrides as the runner writes them (numbers chosen by hand)."""

from __future__ import annotations

import json
import math
from pathlib import Path

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SIMCLR = "SimCLR"

SDCLR = "SDCLR p=0.9 dual-BN head3"

N_CLASSES = 10

COUNTS = [500, 300, 180, 110, 65, 40, 24, 14, 9, 5]

# (label, method, split) -> linear numbers (acc, many, medium, few, std); fewshot = linear - 10
LINEAR = {
    (SIMCLR, "SimCLR", 1): (80.0, 90.0, 80.0, 70.0, 8.0),
    (SIMCLR, "SimCLR", 2): (82.0, 91.0, 81.0, 72.0, 7.0),
    (SIMCLR, "SimCLR", 3): (84.0, 92.0, 85.0, 74.0, 6.0),
    (SDCLR, "SDCLR", 1): (85.0, 88.0, 86.0, 80.0, 4.0),
    (SDCLR, "SDCLR", 2): (85.0, 89.0, 84.0, 81.0, 5.0),
    (SDCLR, "SDCLR", 3): (88.0, 90.0, 88.0, 85.0, 3.0),
}


def probe_result(acc, many, medium, few, std, split):
    # Each split has its own class order: rotate the counts by the split index.
    counts = COUNTS[split:] + COUNTS[:split]
    per_class = [acc + (c - 100) / 50 for c in counts]
    return {
        "acc": acc,
        "many": many,
        "medium": medium,
        "few": few,
        "std": std,
        "per_class": per_class,
        "groups": {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]},
        "class_counts": counts,
        "seconds": 30.0,
    }


def write_job(root: Path, name: str, overrides: list[str], metrics=None, status=None) -> Path:
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (job / "status.json").write_text(json.dumps(status))
    return job


def job_metrics(label, method, split, linear=True, fewshot=True):
    m = {
        "run": {
            "method": method,
            "label": label,
            "dataset": "cifar10_lt",
            "split": split,
            "pretrain_set": "D_i",
            "backbone": "resnet18",
            "seed": 0,
        },
        "pretrain": {"epochs": 2000, "final_loss": 5.0 + split / 10, "seconds": 100.0},
    }
    nums = LINEAR[(label, method, split)] if (label, method, split) in LINEAR else (50.0,) * 5
    if linear:
        m["linear"] = probe_result(*nums, split)
    if fewshot:
        m["fewshot"] = probe_result(*(v - 10 for v in nums[:4]), nums[4] + 1, split)
    return m


def write_sweep(tmp_path: Path) -> Path:
    """A Hydra multirun of SimCLR and SDCLR over splits 1-3, with a failed job (split 4), a
    job with only its config, a running one, and a combination without any job dir."""
    root = tmp_path / "multirun" / "2026-11-22" / "10-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n"
        "  overrides:\n"
        "    task:\n"
        "    - method=simclr,sdclr\n"
        "    - split=split1,split2,split3,split4,split5\n"
        "    - data=cifar10_lt\n"
    )
    i = 0
    for (label, method, split), _nums in LINEAR.items():
        # Jobs 3..5 (SDCLR) have no status.json: completed is inferred from metrics.json.
        status = {"status": "completed", "error": None, "stage": "fewshot"}
        write_job(
            root,
            str(i),
            [f"method={method.lower()}", f"split=split{split}", "data=cifar10_lt"],
            metrics=job_metrics(label, method, split),
            status=status if method == "SimCLR" else None,
        )
        i += 1
    # 6: failed after the linear probe; its linear numbers must not be averaged in.
    failed = job_metrics(SIMCLR, "SimCLR", 4, fewshot=False)
    failed["linear"]["acc"] = 0.0
    write_job(
        root,
        "6",
        ["method=simclr", "split=split4", "data=cifar10_lt"],
        metrics=failed,
        status={"status": "failed", "error": "RuntimeError: CUDA out of memory", "stage": "few"},
    )
    # 7: a job dir with only its Hydra config (no metrics, no status).
    write_job(root, "7", ["method=sdclr", "split=split4", "data=cifar10_lt"])
    # 8: still running, pretraining only.
    write_job(
        root,
        "8",
        ["method=sdclr", "split=split5", "data=cifar10_lt"],
        metrics={"run": {"method": "SDCLR", "label": SDCLR, "split": 5}, "pretrain": {}},
        status={"status": "running", "error": None, "stage": "linear"},
    )
    # method=simclr split=split5 has no job dir at all.
    return root


def cells(line: str) -> list[str]:
    if not line.startswith("|"):
        return []
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def pop_std(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
