"""Step 1, ``env``: GPU name and memory, driver, versions, commit; the package imports and
``device=auto`` picks CUDA. :func:`env_info` runs in a helper subprocess (``--env-info``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed
from gpucheck.settings import PY, REPO, SCRIPT


def env_info(dry: bool) -> dict[str, Any]:
    """(Helper subprocess.) Versions, the GPU, and whether the package imports and picks CUDA."""
    import platform

    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
    }
    for name in ("torchvision", "timm", "numpy", "hydra", "omegaconf"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # reported, not fatal here: the import check below decides
            info[name] = f"missing ({type(e).__name__}: {e})"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            gpu=p.name,
            gpu_memory_mib=round(p.total_memory / 2**20),
            gpu_count=torch.cuda.device_count(),
            capability=f"{p.major}.{p.minor}",
            multiprocessors=p.multi_processor_count,
        )
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        if smi.returncode == 0 and smi.stdout.strip():
            info["driver"] = smi.stdout.strip().splitlines()[0].split(",")[-1].strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"not run ({e})"
    errors = []
    for module in ("sdclr.cli.run", "sdclr.cli.bench"):
        try:
            __import__(module)
        except Exception as e:
            errors.append(f"import {module}: {type(e).__name__}: {e}")
    from sdclr.utils.distributed import resolve_device

    info["auto_device"] = str(resolve_device("auto"))
    if not dry and not info["auto_device"].startswith("cuda"):
        errors.append(f"device=auto picked {info['auto_device']}, not CUDA")
    info["errors"] = errors
    return info


def commit(data: Path) -> str:
    """The commit checked: git where the checkout has it, else the COMMIT file that
    ``--prepare`` wrote next to the carried data (a device copy of the tree has no .git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        if head.returncode == 0:
            dirty = subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=REPO,
                capture_output=True,
                text=True,
            ).stdout.strip()
            return head.stdout.strip() + ("-dirty" if dirty else "")
    except OSError:
        pass
    stamp = data / "COMMIT"
    return stamp.read_text().strip() + " (from COMMIT)" if stamp.is_file() else "unknown"


def env_commands(args: CommandArgs) -> list[list[str]]:
    return [[PY, str(SCRIPT), "--env-info", *(["--dry-run"] if args.dry else [])]]


def step_env(check: Check) -> dict[str, Any]:
    info = check.run_json("env", env_commands(check.command_args())[0])
    info["commit"] = check.record["commit"]
    check.cuda = bool(info["cuda_available"]) and not check.dry
    if info["errors"]:
        raise StepFailed("; ".join(info["errors"]), info)
    return info
