"""Loading a labelled image dataset into memory as one uint8 array, with a decode cache.

Two layouts are accepted:

* torchvision's CIFAR batches (``cifar-10-batches-py/`` or ``cifar-100-python/``), optionally
  downloaded when ``data.download=true``;
* an image folder ``train/<class>/*`` and ``test/<class>/*``, as a directory or as a .tar.gz.

JPEG decoding happens once; the decoded arrays are cached under ``data.cache_dir`` keyed by
the source files' identity, so later runs start in seconds. Training images can be put in the
dataset's original order with ``data.order_labels`` (a .npy of labels in that order), which is
what makes index files written for torchvision's CIFAR select the same images.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from sdclr.errors import ConfigError, DataError
from sdclr.utils.io import CONF_DIR, natural_key, write_atomically
from sdclr.utils.progress import progress_bar

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
CACHE_VERSION = 1
TORCHVISION_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


@dataclass
class ImageData:
    """A labelled dataset held in memory: images are uint8 NCHW arrays."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    source: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        return labels_fingerprint(self.train_y)


def labels_fingerprint(labels: np.ndarray) -> str:
    """Identity of a training set for split files: hash of its labels in order."""
    data = np.ascontiguousarray(np.asarray(labels, dtype="<i8")).tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def base_name(dataset_name: str) -> str:
    """``cifar10_lt`` -> ``cifar10``: the underlying dataset of a long-tailed config."""
    return dataset_name.removesuffix("_lt")


# --- discovery ----------------------------------------------------------------------------


@dataclass
class Source:
    kind: str  # torchvision | folder_dir | folder_tar
    path: Path


def find_source(
    root: str | os.PathLike,
    dataset: str,
    fmt: str = "auto",
    archive: str | None = None,
    download: bool = False,
) -> Source:
    """Locate the data under ``root`` in one of the supported layouts, or explain."""
    root_path = Path(root).expanduser().absolute()
    base = base_name(dataset)
    tv_dir = TORCHVISION_DIRS.get(base)
    hint = (
        f"Point data.root (or the SDCLR_DATA environment variable) at a directory holding "
        f"{tv_dir + '/ (torchvision format), ' if tv_dir else ''}"
        f"{archive + ', ' if archive else ''}or train/<class>/ and test/<class>/ image "
        f"folders, or at an image-folder .tar.gz"
    )
    if root_path.is_file():
        if fmt == "torchvision":
            raise DataError(
                f"data root {root_path} is a file, but data.format=torchvision "
                f"needs a directory. {hint}."
            )
        if _is_tar(root_path):
            return Source("folder_tar", root_path)
        raise DataError(f"data root {root_path} is a file but not a .tar/.tar.gz archive. {hint}.")
    if fmt in ("auto", "torchvision") and tv_dir:
        if (root_path / tv_dir).is_dir():
            return Source("torchvision", root_path)
        if download:
            return Source("torchvision", root_path)
    if fmt in ("auto", "folder"):
        if (root_path / "train").is_dir() and (root_path / "test").is_dir():
            return Source("folder_dir", root_path)
        if archive and (root_path / archive).is_file():
            return Source("folder_tar", root_path / archive)
    if not root_path.exists():
        raise DataError(
            f"data root {root_path} does not exist. {hint}"
            f"{' (or add data.download=true when online)' if tv_dir else ''}."
        )
    if root_path.is_dir() and not any(root_path.iterdir()):
        raise DataError(f"data root {root_path} is empty. {hint}.")
    raise DataError(
        f"no {dataset} data found under {root_path} in a supported layout "
        f"(data.format={fmt}). {hint}."
    )


def _is_tar(path: Path) -> bool:
    return path.name.endswith((".tar.gz", ".tgz", ".tar"))


# --- loading ------------------------------------------------------------------------------


def load_image_data(
    root: str,
    dataset: str,
    fmt: str = "auto",
    archive: str | None = None,
    order_labels: str | None = None,
    download: bool = False,
    image_size: int | None = None,
    cache_dir: str | None = None,
    progress: bool = True,
    num_classes: int | None = None,
) -> ImageData:
    """Load (from the decode cache when possible) the train and test images of a dataset;
    with ``num_classes``, refuse data with another number of classes (before decoding it)."""
    source = find_source(root, dataset, fmt, archive, download)

    def check_classes(classes: list[str]) -> None:
        check_class_count(dataset, num_classes, classes, source.path)

    order_path = _resolve_order_labels(order_labels, source)
    cache_file = None
    if cache_dir and source.kind != "torchvision":
        key = _cache_key(source, order_path)
        cache_file = Path(cache_dir).expanduser() / f"{base_name(dataset)}-{key}.npz"
        if cache_file.is_file():
            try:
                cached = _read_cache(cache_file, source)
            except (OSError, ValueError, KeyError):
                cached = None  # a damaged cache is rebuilt below
            if cached is not None:
                check_classes(cached.classes)
                return cached
    if source.kind == "torchvision":
        data = _load_torchvision(source.path, base_name(dataset), download)
        check_classes(data.classes)
    else:
        data = _load_folder(source, image_size, progress, check_classes)
        if order_path is not None:
            data = _apply_original_order(data, order_path)
    if image_size is not None and data.train_x.shape[-1] != image_size:
        raise DataError(
            f"images in {source.path} are {data.train_x.shape[-2]}x"
            f"{data.train_x.shape[-1]} but data.image_size={image_size}; "
            f"choose the data config that matches this dataset"
        )
    if cache_file is not None:
        _write_cache(cache_file, data)
    return data


def _resolve_order_labels(order_labels: str | None, source: Source) -> Path | None:
    if not order_labels or source.kind == "torchvision":
        return None  # torchvision's batches are already in the original order
    path = Path(order_labels).expanduser()
    if not path.is_absolute():
        # relative names are looked up next to the data (where the labels file ships)
        base = source.path.parent if source.path.is_file() else source.path
        path = base / path
    return path if path.is_file() else None


def _cache_key(source: Source, order_path: Path | None) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{source.kind}|{source.path.resolve()}".encode())
    for p in [source.path] + ([order_path] if order_path else []):
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path, source: Source) -> ImageData:
    with np.load(path, allow_pickle=False) as z:
        return ImageData(
            z["train_x"],
            z["train_y"],
            z["test_x"],
            z["test_y"],
            [str(c) for c in z["classes"]],
            f"{source.path} (cached: {path})",
        )


def _write_cache(path: Path, data: ImageData) -> None:

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no suffix to the name
            np.savez(
                f,
                train_x=data.train_x,
                train_y=data.train_y,
                test_x=data.test_x,
                test_y=data.test_y,
                classes=np.array(data.classes),
            )

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, write)
    except OSError:
        pass  # caching is an optimisation; a read-only cache dir must not stop a run


TORCHVISION_FILES = {
    "cifar10": (
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
    ),
    "cifar100": (["train"], ["test"], "meta", "fine_labels", "fine_label_names"),
}


def _load_torchvision(root: Path, base: str, download: bool) -> ImageData:
    """Read torchvision's CIFAR pickles directly (no md5 pass over the files each run)."""
    if base not in TORCHVISION_FILES:
        raise DataError(f"torchvision format is supported for cifar10 and cifar100, not {base}")
    folder = root / TORCHVISION_DIRS[base]
    if download and not folder.is_dir():
        import torchvision

        cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
        try:
            cls[base](str(root), train=True, download=True)
        except Exception as e:  # no network, disk full, ...
            raise DataError(
                f"could not download {base} to {root} ({e}); fetch it on a machine "
                f"with internet access and point data.root at it"
            ) from e
    train_files, test_files, meta_file, label_key, names_key = TORCHVISION_FILES[base]

    def read(name: str) -> dict:
        path = folder / name
        try:
            with open(path, "rb") as f:
                return pickle.load(f, encoding="latin1")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError) as e:
            raise DataError(
                f"torchvision {base} file {path} is missing or corrupt ({e}); "
                f"download it again (data.download=true) or use the image-folder "
                f"layout"
            ) from e

    def stack(files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        parts = [read(f) for f in files]
        x = np.concatenate([np.asarray(p["data"], dtype=np.uint8) for p in parts])
        y = np.concatenate([np.asarray(p[label_key], dtype=np.int64) for p in parts])
        return np.ascontiguousarray(x.reshape(-1, 3, 32, 32)), y

    train_x, train_y = stack(train_files)
    test_x, test_y = stack(test_files)
    classes = [str(c) for c in read(meta_file)[names_key]]
    return ImageData(train_x, train_y, test_x, test_y, classes, f"{folder} (torchvision)")


def check_class_count(dataset: str, expected: int | None, classes: list[str], where: Path) -> None:
    """Refuse data whose number of classes is not the config's ``data.num_classes`` (for
    example ``data=cifar100_lt`` with data.root at a CIFAR-10 copy)."""
    if expected is None or len(classes) == expected:
        return
    found = len(classes)
    names = ", ".join(classes[:3]) + (", ..." if found > 3 else "")
    fits = [name for name, n in data_configs().items() if n == found]
    other = f"choose data={' or data='.join(fits)}" if fits else f"set data.num_classes={found}"
    raise ConfigError(
        f"config key 'data.num_classes': the data at {where} has {found} classes ({names}), "
        f"but data.name={dataset} expects data.num_classes={expected}; point data.root (or "
        f"SDCLR_DATA) at the {dataset} data, or {other} for this data"
    )


def data_configs() -> dict[str, int | None]:
    """The ``data=`` options (conf/data/*.yaml) and their ``data.num_classes``."""
    out = {}
    for path in sorted((CONF_DIR / "data").glob("*.yaml")):
        try:
            out[path.stem] = (yaml.safe_load(path.read_text()) or {})["data"].get("num_classes")
        except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
            continue
    return out


def _load_folder(
    source: Source,
    image_size: int | None,
    progress: bool,
    check_classes: Callable[[list[str]], None] | None = None,
) -> ImageData:
    """Read train/ and test/ image folders (directory or archive) and decode them
    (``check_classes`` sees the class names first)."""
    if source.kind == "folder_dir":
        entries = _list_dir(source.path)
        reader = _DirReader(source.path)
    else:
        entries, reader = _list_tar(source.path)
    splits: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for split, cls, name in entries:
        splits[split].setdefault(cls, []).append(name)
    where = str(source.path)
    for split in ("train", "test"):
        if not splits[split]:
            raise DataError(
                f"{where} has no images under {split}/<class>/; expected an image "
                f"folder with train/<class>/*.jpg and test/<class>/*.jpg"
            )
    train_classes, test_classes = sorted(splits["train"]), sorted(splits["test"])
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        raise DataError(
            f"{where}: train and test have different class sets (only in train: "
            f"{only_train[:5]}, only in test: {only_test[:5]}); every class needs "
            f"images in both train/ and test/"
        )
    classes = train_classes
    if check_classes is not None:
        check_classes(classes)
    arrays = {}
    for split in ("train", "test"):
        names, labels = [], []
        for label, cls in enumerate(classes):
            files = sorted(splits[split][cls], key=natural_key)
            names += [f"{split}/{cls}/{f}" for f in files]
            labels += [label] * len(files)
        images = _decode_all(names, reader, image_size, progress, f"decoding {split}")
        arrays[split] = (images, np.asarray(labels, dtype=np.int64))
    reader.close()
    return ImageData(
        arrays["train"][0], arrays["train"][1], arrays["test"][0], arrays["test"][1], classes, where
    )


def _list_dir(root: Path) -> list[tuple[str, str, str]]:
    out = []
    for split in ("train", "test"):
        for cls_dir in sorted(p for p in (root / split).iterdir() if p.is_dir()):
            for f in cls_dir.iterdir():
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append((split, cls_dir.name, f.name))
    return out


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()

    def close(self) -> None:
        pass


class _MemReader:
    def __init__(self, blobs: dict[str, bytes]):
        self.blobs = blobs

    def read(self, name: str) -> bytes:
        return self.blobs[name]

    def close(self) -> None:
        self.blobs.clear()


def _list_tar(path: Path) -> tuple[list[tuple[str, str, str]], _MemReader]:
    """Read every image of an archive into memory in one sequential pass."""
    blobs: dict[str, bytes] = {}
    entries = []
    try:
        with tarfile.open(path, "r:*") as tar:
            for m in tar:
                if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                parts = Path(m.name).parts
                # accept an optional top-level folder: [prefix/]train/<class>/<file>
                if len(parts) >= 3 and parts[-3] in ("train", "test"):
                    split, cls, name = parts[-3], parts[-2], parts[-1]
                    f = tar.extractfile(m)
                    if f is None:
                        continue
                    blobs[f"{split}/{cls}/{name}"] = f.read()
                    entries.append((split, cls, name))
    except (tarfile.TarError, EOFError, OSError, ValueError) as e:
        raise DataError(
            f"archive {path} is corrupt or truncated ({e}); download or copy it again"
        ) from e
    return entries, _MemReader(blobs)


def _decode_one(args: tuple[str, bytes, int | None]) -> np.ndarray:
    name, blob, size = args
    try:
        with Image.open(io.BytesIO(blob)) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(
            f"image {name} is corrupt or truncated ({e}); replace or remove the file"
        ) from e
    if size is not None and arr.shape[:2] != (size, size):
        raise DataError(
            f"image {name} is {arr.shape[1]}x{arr.shape[0]} px, but this dataset "
            f"config expects {size}x{size}; resize the images or choose the "
            f"matching data config"
        )
    return arr


def _decode_all(
    names: list[str], reader, size: int | None, progress: bool, desc: str
) -> np.ndarray:
    def jobs() -> Iterable[tuple[str, bytes, int | None]]:
        for n in names:
            yield n, reader.read(n), size

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(
            progress_bar(
                pool.map(_decode_one, jobs(), chunksize=256),
                total=len(names),
                desc=desc,
                enabled=progress,
            )
        )
    if size is None:
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise DataError(
                f"images have different sizes ({sorted(shapes)[:3]}...); this "
                f"loader needs one size for a whole dataset"
            )
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def _apply_original_order(data: ImageData, order_path: Path) -> ImageData:
    """Permute class-major folder images into the order given by a labels file.

    Image k of class c (by natural file-name order) becomes the k-th occurrence of label c
    in the labels file, the convention of the shared CIFAR JPEG copy.
    """
    try:
        labels = np.load(order_path).astype(np.int64)
    except (OSError, ValueError) as e:
        raise DataError(f"data.order_labels {order_path} is not a readable .npy ({e})") from e
    n = len(data.train_y)
    have = np.bincount(data.train_y, minlength=data.num_classes)
    want = np.bincount(labels, minlength=data.num_classes) if len(labels) else np.zeros(0)
    if len(labels) != n or len(want) != len(have) or not np.array_equal(have, want):
        raise DataError(
            f"data.order_labels {order_path} ({len(labels)} labels) does not fit "
            f"the {n} training images found (per-class counts differ); use the "
            f"labels file that ships with this copy, or set data.order_labels=null"
        )
    starts = np.concatenate([[0], np.cumsum(have)[:-1]])
    order = np.empty(n, dtype=np.int64)
    seen = np.zeros(data.num_classes, dtype=np.int64)
    for i, c in enumerate(labels):  # 50k iterations of cheap integer work, done once per cache
        order[i] = starts[c] + seen[c]
        seen[c] += 1
    return ImageData(
        np.ascontiguousarray(data.train_x[order]),
        data.train_y[order],
        data.test_x,
        data.test_y,
        data.classes,
        f"{data.source} (original order from {order_path.name})",
    )


def load_arrays(cfg) -> ImageData:
    """The dataset of a config (``cfg.data``), decoded or from the decode cache."""
    d = cfg.data
    return load_image_data(
        d.root,
        d.name,
        d.format,
        d.archive,
        d.order_labels,
        d.download,
        d.image_size,
        d.cache_dir,
        progress=True,
        num_classes=d.num_classes,
    )
