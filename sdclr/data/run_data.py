"""From the data and split config to what a run trains on: image banks, labels and a split.

Two routes, chosen by :func:`sdclr.config.derived.uses_files`:

* arrays (CIFAR): :func:`sdclr.data.arrays.load_image_data` decodes everything once (cached) and the
  split comes from :func:`sdclr.data.splits.resolve_split`;
* image files (ImageNet-style data, image folders): :func:`sdclr.data.files.load_file_dataset`
  gives the catalogue and split; pixels are decoded per batch (:class:`FileImages`), or once
  into a resized cache when ``data.cache_size`` is set.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sdclr.config.derived import uses_files
from sdclr.data.arrays import load_arrays
from sdclr.data.banks import FileImages, Images, TensorImages, decode_resized
from sdclr.data.files import load_file_dataset
from sdclr.data.splits import Split, apply_fraction, resolve_split, splits_dir, stratified_fraction
from sdclr.errors import ConfigError
from sdclr.utils.io import write_atomically


@dataclass
class RunData:
    train: Images  # every training item (pool, val and the subsets)
    train_labels: torch.Tensor
    test: Images
    test_labels: torch.Tensor
    split: Split
    classes: list[str]
    source: str
    fingerprint: str
    labelled: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def train_y(self) -> np.ndarray:
        return self.train_labels.cpu().numpy()


def load_run_data(cfg, device: torch.device, progress: bool = True) -> RunData:
    """The data of a run, with ``data.fraction`` applied to every subset and the test set."""
    if uses_files(cfg):
        return _from_files(cfg, device, progress)

    data = load_arrays(cfg)
    split = apply_fraction(
        resolve_split(cfg.split, cfg.data, data.train_y), data.train_y, cfg.data.fraction
    )
    test_idx = stratified_fraction(np.arange(len(data.test_y)), data.test_y, cfg.data.fraction)
    return RunData(
        TensorImages(torch.from_numpy(data.train_x).to(device)),
        torch.from_numpy(data.train_y).to(device),
        TensorImages(torch.from_numpy(np.ascontiguousarray(data.test_x[test_idx])).to(device)),
        torch.from_numpy(data.test_y[test_idx]).to(device),
        split,
        data.classes,
        data.source,
        data.fingerprint,
    )


def _from_files(cfg, device: torch.device, progress: bool) -> RunData:
    d = cfg.data
    data, split = load_file_dataset(d, cfg.split, splits_dir(cfg.split, d.cache_dir))
    if d.num_classes is not None and data.labelled and data.num_classes != d.num_classes:
        raise ConfigError(
            f"config key 'data.num_classes': the lists hold {data.num_classes} classes but "
            f"data.num_classes={d.num_classes}; set it to {data.num_classes} or null"
        )
    split = apply_fraction(split, data.train_y, d.fraction)
    test_idx = np.zeros(0, dtype=np.int64)
    if len(data.test_y):
        test_idx = stratified_fraction(np.arange(len(data.test_y)), data.test_y, d.fraction)
    test_paths = [data.test_paths[i] for i in test_idx]
    if d.cache_size is not None:
        check_cache_fits(len(data.train_paths) + len(test_paths), int(d.cache_size), device)
        # decode only what the run can touch; a smaller fraction re-uses nothing, on purpose
        subsets = ("pool", "val", "D_i", "D_b", "S_b")
        used = np.unique(np.concatenate([split.subset(s) for s in subsets]))
        train = TensorImages(
            _resized_cache(cfg, data.root, data.train_paths, used, device, progress)
        )
        test = TensorImages(
            _resized_cache(cfg, data.root, test_paths, np.arange(len(test_paths)), device, progress)
        )
    else:
        train = FileImages(data.root, data.train_paths, device, d.workers)
        test = FileImages(data.root, test_paths, device, d.workers)
    return RunData(
        train,
        torch.from_numpy(data.train_y).to(device),
        test,
        torch.from_numpy(data.test_y[test_idx]).to(device),
        split,
        data.classes,
        data.source
        + (f"; resized cache {d.cache_size} px" if d.cache_size else "; decoded per batch"),
        data.fingerprint,
        data.labelled,
    )


# What the resized cache may take of the memory free when the run starts: the rest is left to
# the model, its activations, the optimiser and the augmentation's buffers.
CACHE_SHARE = 0.75


def free_memory_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device``: the GPU's free memory, or the host's
    available memory (MemAvailable) for the CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_cache_fits(
    images: int, size: int, device: torch.device, free_bytes: int | None = None
) -> None:
    """Refuse, before anything is decoded, a resized cache of ``images`` uint8 images of
    ``size`` x ``size`` px that would take more than CACHE_SHARE of the memory free on
    ``device`` (``free_bytes``: that memory, measured when None)."""
    need = images * 3 * size * size
    free = free_memory_bytes(device) if free_bytes is None else int(free_bytes)
    limit = int(CACHE_SHARE * free)
    if need > limit:
        where = "GPU" if device.type == "cuda" else "host"
        raise ConfigError(
            f"config key 'data.cache_size': a {size}-px cache of {images:,} images takes "
            f"{need / 2**30:.1f} GiB on the {device.type} device, over the limit of "
            f"{limit / 2**30:.1f} GiB ({CACHE_SHARE:.0%} of the {free / 2**30:.1f} GiB {where} "
            f"memory free); decode per batch instead (data.cache_size=null) or set a smaller "
            f"data.cache_size"
        )


def _resized_cache(
    cfg, root: Path, paths: list[str], used: np.ndarray, device: torch.device, progress: bool
) -> torch.Tensor:
    """uint8 [N, 3, S, S] for the items in ``used`` (others stay zero), from the disk cache
    when the same files were decoded at this size before."""
    size = int(cfg.data.cache_size)
    h = hashlib.sha1(f"{root.resolve()}|{size}".encode())
    for i in used.tolist():
        h.update(f"{paths[i]}\n".encode())
    cache = Path(cfg.data.cache_dir).expanduser() / f"files-{h.hexdigest()[:16]}-{size}.npy"
    arr = None
    if cache.is_file():
        try:
            arr = np.load(cache, mmap_mode="r")
        except (OSError, ValueError):
            arr = None
    if arr is None or arr.shape != (len(used), 3, size, size):
        arr = decode_resized(
            root,
            [paths[i] for i in used],
            size,
            cfg.data.workers,
            f"decoding ({size} px)",
            progress,
        )
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(cache, lambda tmp: _save_array(tmp, arr))
        except OSError:
            pass  # caching is an optimisation
    full = torch.zeros((len(paths), 3, size, size), dtype=torch.uint8, device=device)
    if len(used):
        full[torch.as_tensor(used, device=device)] = torch.from_numpy(np.asarray(arr)).to(device)
    return full


def _save_array(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: numpy adds no suffix to the name
        np.save(f, arr)
