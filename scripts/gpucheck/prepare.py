"""``--prepare DIR``: fill the folder a device call carries (``make gpu-check-device``)."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Any

from gpucheck.env import commit
from gpucheck.settings import CIFAR, TINY_IMAGENET


def prepare(folder: Path, data: Path, wheels: Path, classes: int = 40) -> dict[str, Any]:
    """Fill the folder a device call carries: the wheels the device lacks (hydra-core,
    omegaconf, antlr), the CIFAR-10 copy, Tiny ImageNet cut to its first ``classes`` classes
    (the nvJPEG test uses 12; the whole archive is 36 MiB of the call's 64), and COMMIT."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob("*.whl"):
        f.unlink()
    for whl in sorted(wheels.glob("*.whl")):
        shutil.copy2(whl, folder / whl.name)
    for name in CIFAR:
        shutil.copy2(data / name, folder / name)
    src, dst = data / TINY_IMAGENET, folder / TINY_IMAGENET
    if src.is_file():
        with tarfile.open(src, "r:gz") as tar:
            members = tar.getmembers()
            wnids = sorted(
                {
                    Path(m.name).parts[1]
                    for m in members
                    if m.name.startswith("train/") and len(Path(m.name).parts) == 3
                }
            )
            keep = set(wnids[:classes])
            with tarfile.open(dst, "w:gz") as out:
                for m in members:
                    parts = Path(m.name).parts
                    if len(parts) >= 2 and parts[0] in ("train", "val") and parts[1] not in keep:
                        continue
                    out.addfile(m, tar.extractfile(m) if m.isfile() else None)
    (folder / "COMMIT").write_text(commit(data) + "\n")
    sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir()) if f.is_file()}
    return {"folder": str(folder), "files": sizes, "mib": round(sum(sizes.values()) / 2**20, 1)}
