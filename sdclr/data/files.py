"""Datasets of image files: list files, image folders, and their long-tailed splits.

ImageNet-100-LT, ImageNet-LT-exp and a user's own collection are too large (and too varied in
size) to decode into one array, so here a dataset is a catalogue of files: every training item
(a path relative to ``data.root`` and a label) and every test item. A split is the same
:class:`sdclr.data.splits.Split` as for CIFAR, indexing into the training items.

Where the items come from:

* **the reference's lists** (``split.source=official``, the default of imagenet100_lt): the
  ImageNet-100-LT lists of the reference code, shipped in ``splits/official/imagenet100``
  (:data:`OFFICIAL_LISTS`), read like list files;
* **list files** (``data.lists.*``): ``relative/path label`` lines, the format of the paper's
  split lists, one file per subset (pool, val, test, D_i, D_b, S_b); given, they are the split
  whatever ``split.source`` says;
* **generated lists**: an image folder is scanned (``<root>/<train_dir>/<class>/*``, with
  ``<root>/<test_dir>/<class>/*`` as test set when it exists, or ``<root>/<class>/*``, or a flat
  folder of unlabelled images), a split is generated with the configured profile, and its lists
  are saved under ``<split.dir>/<data.name>/<folder key>/split<i>/`` (split.dir defaults to
  ``<data.cache_dir>/splits``) with a ``meta.json`` holding the fingerprint of the lists. The
  folder key (:func:`lists_key`) is a fingerprint of the scanned folder (its classes and
  training and test items) and of the data settings that draw the lists from it (profile,
  imbalance, head and tail counts, validation, test and few-shot images per class): lists made
  from one folder, or with other settings, are never read for another. Later runs scan the
  folder again and read the saved lists, like the CIFAR split files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdclr.data.arrays import IMAGE_EXTENSIONS
from sdclr.data.splits import (
    SUBSETS,
    Split,
    generate_split,
    long_tail_profile,
    official_dir,
    verify_checksums,
)
from sdclr.errors import DataError
from sdclr.utils.io import natural_key, write_atomically

LIST_SUBSETS = ("pool", "val", "test", *SUBSETS)
LISTS_VERSION = 1
UNLABELLED = "unlabelled"
# The reference's ImageNet-100-LT lists (its split/imagenet-100/) by subset. There is no pool
# list: the linear probe trains on every image of D_i's class folders except the validation
# list, the reference's "full set" (:func:`split_from_lists`).
OFFICIAL_LISTS = {
    "D_i": "imageNet_100_LT_train.txt",
    "D_b": "imageNet_100_BL_train.txt",
    "S_b": "imageNet_100_sub_balance_train_0.01.txt",
    "val": "ImageNet_100_val.txt",
    "test": "ImageNet_100_test.txt",
}


@dataclass
class FileData:
    """Training and test items of a file dataset; paths are relative to ``root``."""

    root: Path
    train_paths: list[str]
    train_y: np.ndarray
    test_paths: list[str]
    test_y: np.ndarray
    classes: list[str]
    source: str
    labelled: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def fingerprint(self) -> str:
        return items_fingerprint(self.train_paths, self.train_y)


def items_fingerprint(paths: list[str], labels: np.ndarray) -> str:
    """Identity of a set of training items: hash of its ``path label`` lines in order."""
    h = hashlib.sha256()
    for p, y in zip(paths, np.asarray(labels).tolist()):
        h.update(f"{p} {y}\n".encode())
    return h.hexdigest()[:16]


# --- scanning a folder ------------------------------------------------------------------------


@dataclass
class FolderScan:
    train: list[tuple[str, int]]
    test: list[tuple[str, int]] | None  # None: no test folder, carve one
    classes: list[str]
    labelled: bool


def _images_in(folder: Path) -> list[str]:
    names = [
        e.name
        for e in os.scandir(folder)
        if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(names, key=natural_key)


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _read_class_list(path: str | None, root: Path) -> list[str] | None:
    if not path:
        return None
    p = Path(path).expanduser()
    p = p if p.is_absolute() else root / p
    if not p.is_file():
        raise DataError(f"data.class_list {p} not found; give a file with one class name per line")
    names = [ln.split()[0] for ln in p.read_text().splitlines() if ln.strip()]
    if len(set(names)) != len(names) or not names:
        raise DataError(f"data.class_list {p} is empty or names a class twice")
    return names


def scan_folder(
    root: str | os.PathLike,
    train_dir: str = "train",
    test_dir: str = "test",
    class_list: str | None = None,
) -> FolderScan:
    """Find the images of a folder dataset (see the module docstring for the layouts)."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DataError(
            f"data root {root} is not a directory; point data.root (or SDCLR_DATA) at an image "
            f"folder <root>/<class>/*.jpg or <root>/{train_dir}/<class>/*.jpg"
        )
    base = root / train_dir if (root / train_dir).is_dir() else root
    prefix = "" if base == root else f"{train_dir}/"  # training paths are relative to root
    wanted = _read_class_list(class_list, root)
    classes = _class_dirs(base)
    if not classes:  # a flat folder: unlabelled images, pretraining only
        names = _images_in(base)
        if not names:
            raise DataError(
                f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {base}; expected "
                f"<root>/<class>/*.jpg, <root>/{train_dir}/<class>/*.jpg or a flat folder"
            )
        return FolderScan([(prefix + n, 0) for n in names], None, [UNLABELLED], False)
    if wanted is not None:
        missing = [c for c in wanted if c not in classes]
        if missing:
            raise DataError(
                f"data.class_list names {len(missing)} classes that {base} lacks (e.g. "
                f"{missing[:3]}); fix the class list or the data root"
            )
        classes = wanted
    train = []
    for label, c in enumerate(classes):
        train += [(f"{prefix}{c}/{n}", label) for n in _images_in(base / c)]
    counts = np.bincount([y for _, y in train], minlength=len(classes))
    if (counts == 0).any():
        c = classes[int(np.flatnonzero(counts == 0)[0])]
        raise DataError(f"class folder {base / c} has no images; remove it or add images")
    test = None
    if base != root and (root / test_dir).is_dir():
        test = []
        present = set(_class_dirs(root / test_dir))
        for label, c in enumerate(classes):
            if c in present:
                test += [(f"{test_dir}/{c}/{n}", label) for n in _images_in(root / test_dir / c)]
    return FolderScan(train, test, classes, True)


# --- list files ---------------------------------------------------------------------------------


def read_list(path: Path, num_classes: int | None = None) -> tuple[list[str], np.ndarray]:
    """``relative/path label`` lines (the label is the last field, so paths may hold spaces)."""
    if not path.is_file():
        raise DataError(f"list file {path} not found; fix data.lists or remove the entry")
    paths, labels = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        rel, _, label = line.rpartition(" ")
        try:
            y = int(label)
        except ValueError:
            y = None
        if not rel or y is None:
            raise DataError(f"{path}, line {n}: expected 'relative/path label', got {line[:80]!r}")
        if y < 0 or (num_classes is not None and y >= num_classes):
            raise DataError(
                f"{path}, line {n}: label {y} is out of range for {num_classes} classes "
                f"(labels are 0..{(num_classes or 1) - 1}); fix the list or data.num_classes"
            )
        paths.append(rel.strip())
        labels.append(y)
    if not paths:
        raise DataError(f"list file {path} has no entries")
    return paths, np.asarray(labels, dtype=np.int64)


def write_list(path: Path, paths: list[str], labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(f"{p} {int(y)}\n" for p, y in zip(paths, labels))
    write_atomically(path, lambda tmp: tmp.write_text(text))


def check_files_exist(root: Path, paths: list[str], what: str) -> None:
    missing = [p for p in paths if not (root / p).is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) named by {what} do not exist under {root} (first: "
            f"{missing[0]}); point data.root at the folder the lists are relative to, or fix "
            f"the list"
        )


# --- from lists to a catalogue and a split -----------------------------------------------------


def _resolve(path: str, root: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else root / p


def split_from_lists(
    root: Path,
    lists: dict[str, Path],
    num_classes: int | None,
    index: int,
    dataset: str,
    val_per_class: int,
    class_names: list[str] | None = None,
    check_exist: bool = True,
) -> tuple[FileData, Split]:
    """Read subset lists into one catalogue of training items and a Split indexing into it.

    Required: ``D_i`` and ``test``. Without ``pool`` (the linear probe's training images), the
    pool is every image in the folders of D_i's classes except the validation images (the
    reference code's "full set" for ImageNet-100). Without ``val``, ``val_per_class`` images
    per class are carved from pool images outside the pretraining subsets. ``D_b`` / ``S_b``
    are optional.
    """
    for need in ("D_i", "test"):
        if need not in lists:
            raise DataError(
                f"the list files need a '{need}' list (data.lists.{need}); have {sorted(lists)}"
            )
    read = {name: read_list(p, num_classes) for name, p in lists.items()}
    if "pool" not in read:
        read["pool"] = _pool_from_folders(root, *read["D_i"], read.get("val", ([], None))[0])
    if num_classes is None:
        num_classes = int(max(int(y.max()) for _, y in read.values())) + 1
    # the training catalogue: every item of a training-side list, in order of first appearance
    position: dict[str, int] = {}
    paths: list[str] = []
    labels: list[int] = []
    for name in ("pool", "val", *SUBSETS):
        if name not in read:
            continue
        for p, y in zip(*read[name]):
            at = position.get(p)
            if at is None:
                position[p] = len(paths)
                paths.append(p)
                labels.append(int(y))
            elif labels[at] != y:
                raise DataError(
                    f"{p} has label {labels[at]} in one list and {y} in {lists[name]}; the "
                    f"lists disagree"
                )
    train_y = np.asarray(labels, dtype=np.int64)
    test_paths, test_y = read["test"]
    if check_exist:
        check_files_exist(root, paths, "the training lists")
        check_files_exist(root, test_paths, f"the test list {lists['test']}")

    def idx(name: str) -> np.ndarray:
        return np.sort(np.asarray([position[p] for p in read[name][0]], dtype=np.int64))

    subsets = {name: idx(name) for name in read if name != "test"}
    if "val" not in subsets:
        subsets["val"], subsets["pool"] = _carve_val(subsets, train_y, num_classes, val_per_class)
    present = np.bincount(train_y[subsets["D_i"]], minlength=num_classes) > 0
    test_counts = np.bincount(test_y, minlength=num_classes)
    no_test = np.flatnonzero(present & (test_counts == 0))
    if len(no_test):
        c = int(no_test[0])
        name = class_names[c] if class_names else str(c)
        raise DataError(
            f"class {name} (label {c}) has training images but no test images in "
            f"{lists['test']}; every class needs test images (add them, or carve a test set "
            f"with data.test_per_class)"
        )
    names = class_names or _class_names(paths, train_y, num_classes)
    empty = np.zeros(0, dtype=np.int64)
    split = Split(
        dataset,
        index,
        num_classes,
        subsets["pool"],
        subsets["val"],
        subsets["D_i"],
        subsets.get("D_b", empty),
        subsets.get("S_b", empty),
        len(paths),
        items_fingerprint(paths, train_y),
        "lists " + ", ".join(f"{k}={v}" for k, v in lists.items()),
    )
    data = FileData(
        root, paths, train_y, list(test_paths), test_y, names, f"{root} (image files)", True
    )
    return data, split


def _pool_from_folders(
    root: Path, paths: list[str], labels: np.ndarray, exclude: list[str]
) -> tuple[list[str], np.ndarray]:
    """Every image in the folders holding a class's D_i images, minus ``exclude``."""
    folder_label: dict[str, int] = {}
    for p, y in zip(paths, labels.tolist()):
        folder = str(Path(p).parent)
        if folder_label.setdefault(folder, y) != y:
            raise DataError(
                f"the folder {folder} holds images of labels {folder_label[folder]} and {y} "
                f"in the D_i list, so it is not a class folder; give data.lists.pool"
            )
    skip = set(exclude)
    out_paths, out_labels = [], []
    for folder, y in sorted(folder_label.items()):
        if not (root / folder).is_dir():
            raise DataError(
                f"{root / folder} (a class folder of the D_i list) does not exist; point "
                f"data.root at the folder the lists are relative to"
            )
        for name in _images_in(root / folder):
            rel = f"{folder}/{name}" if folder != "." else name
            if rel not in skip:
                out_paths.append(rel)
                out_labels.append(y)
    return out_paths, np.asarray(out_labels, dtype=np.int64)


def _carve_val(
    subsets: dict[str, np.ndarray], labels: np.ndarray, num_classes: int, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validation images taken from the pool, avoiding images of the pretraining subsets."""
    used = np.concatenate([subsets[s] for s in SUBSETS if s in subsets])
    rng = np.random.default_rng([0, LISTS_VERSION])
    pool = subsets["pool"]
    free = np.setdiff1d(pool, used)
    val = []
    for c in range(num_classes):
        cand = free[labels[free] == c]
        if (labels[pool] == c).any() and len(cand) < per_class:
            raise DataError(
                f"class {c} has {len(cand)} pool images outside D_i/D_b/S_b, fewer than the "
                f"{per_class} validation images to carve; give a val list (data.lists.val) "
                f"or lower data.val_per_class"
            )
        val.append(rng.permutation(cand)[:per_class])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    return val_idx, np.setdiff1d(pool, val_idx)


def _class_names(paths: list[str], labels: np.ndarray, num_classes: int) -> list[str]:
    """A class's name is the folder of its images when that is unambiguous, else its label."""
    names: list[str | None] = [None] * num_classes
    for p, y in zip(paths, labels.tolist()):
        folder = Path(p).parent.name
        if names[y] is None:
            names[y] = folder
        elif names[y] != folder:
            names[y] = ""
    out = [n if n else str(i) for i, n in enumerate(names)]
    return out if len(set(out)) == num_classes else [str(i) for i in range(num_classes)]


def scan_key(scan: FolderScan) -> str:
    """Identity of a scanned folder: a hash of its class names and its training and test items
    (``path label``), which decide the lists generated from it. Two folders share a key only
    when the lists of one are right for the other (the split is drawn from the items alone,
    seeded by its index)."""
    h = hashlib.sha256()
    h.update(json.dumps([scan.classes, scan.labelled, scan.test is None]).encode() + b"\n")
    for p, y in [*scan.train, ("-- test --", -1), *(scan.test or [])]:
        h.update(f"{p} {y}\n".encode())
    return h.hexdigest()[:16]


def lists_key(scan: FolderScan, data_cfg) -> str:
    """The folder key of the lists generated from ``scan`` with ``data_cfg``: the folder's
    identity (:func:`scan_key`) and the data settings that change the lists drawn from it,
    hashed (:func:`list_recipe`)."""
    recipe = json.dumps(list_recipe(data_cfg), sort_keys=True)
    return hashlib.sha256(f"{scan_key(scan)} {recipe}".encode()).hexdigest()[:16]


def list_recipe(data_cfg) -> dict[str, Any]:
    """The settings :func:`generate_lists` draws a split of a folder with: the profile and
    what shapes it (none of that for ``profile=none``; the imbalance factor only without a
    tail count; the exponent only for ``pareto``), and the validation, test and few-shot images
    per class."""
    d = data_cfg
    keys = ["profile", "val_per_class", "test_per_class", "fewshot_per_class"]
    if d.profile != "none":
        keys += ["head_count", "tail_count"]
        keys += ["imbalance_factor"] if d.tail_count is None else []
        keys += ["pareto_exponent"] if d.profile == "pareto" else []
    return {k: d[k] for k in keys}


def scan_data_folder(data_cfg) -> FolderScan:
    d = data_cfg
    return scan_folder(Path(d.root).expanduser().absolute(), d.train_dir, d.test_dir, d.class_list)


def generated_lists_dir(splits_dir: Path, dataset: str, key: str, index: int) -> Path:
    """``<splits_dir>/<data.name>/<folder key>/split<i>``: the generated lists of split
    ``index`` whose folder and settings give ``key`` (:func:`lists_key`)."""
    return Path(splits_dir) / dataset / key / f"split{index}"


def generate_lists(data_cfg, index: int, out_dir: Path, scan: FolderScan | None = None) -> None:
    """Generate split ``index`` of the folder (``scan``, scanned here when not given) with the
    configured profile, save its lists."""
    d = data_cfg
    root = Path(d.root).expanduser().absolute()
    if scan is None:
        scan = scan_data_folder(d)
    paths = [p for p, _ in scan.train]
    labels = np.asarray([y for _, y in scan.train], dtype=np.int64)
    num_classes = len(scan.classes)
    if d.num_classes is not None and scan.labelled and d.num_classes != num_classes:
        raise DataError(
            f"{root} has {num_classes} classes but data.num_classes={d.num_classes}; set "
            f"data.num_classes={num_classes} (or null), or restrict the classes with "
            f"data.class_list"
        )
    carve_test = scan.test is None and scan.labelled
    if not scan.labelled:  # unlabelled: everything is pretraining data
        index_all = np.arange(len(paths))
        subsets = {"pool": index_all, "D_i": index_all, "val": np.zeros(0, dtype=np.int64)}
        test_items: list[tuple[str, int]] = []
        profile_desc = "none (unlabelled)"
    else:
        pool_sizes = np.bincount(labels, minlength=num_classes) - d.val_per_class
        if carve_test:
            pool_sizes = pool_sizes - d.test_per_class
        profile: list[int] | str
        if d.profile == "none":
            profile = "none"
            profile_desc = "none (the folder's own class counts)"
        else:
            head = d.head_count or int(pool_sizes.min())
            profile = long_tail_profile(
                d.profile, num_classes, head, d.imbalance_factor, d.tail_count, d.pareto_exponent
            )
            profile_desc = f"{d.profile} {profile[0]} -> {profile[-1]} ({sum(profile)} images)"
        split = generate_split(
            labels,
            num_classes,
            index,
            d.val_per_class,
            d.imbalance_factor,
            d.fewshot_per_class,
            d.name,
            profile=profile,
            test_per_class=d.test_per_class if carve_test else 0,
            fewshot_in_d_i=False,  # S_b drawn apart from D_i, as the reference's 1 % list
        )
        subsets = {s: split.subset(s) for s in ("pool", "val", *SUBSETS)}
        if carve_test:
            test_items = [(paths[i], int(labels[i])) for i in split.test]
        else:
            test_items = list(scan.test or [])
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, idx in subsets.items():
        write_list(out_dir / f"{name}.txt", [paths[i] for i in idx], labels[idx])
    write_list(
        out_dir / "test.txt",
        [p for p, _ in test_items],
        np.asarray([y for _, y in test_items], dtype=np.int64),
    )
    meta = {
        "dataset": d.name,
        "index": index,
        "root": str(root),
        "classes": scan.classes,
        "labelled": scan.labelled,
        "profile": profile_desc,
        "val_per_class": d.val_per_class,
        "fewshot": f"{d.fewshot_per_class} per class, drawn apart from D_i from the whole pool",
        "test": "carved from train" if carve_test else f"{d.test_dir}/ folder",
        "scan_fingerprint": items_fingerprint(paths, labels),
        "fingerprint": lists_digest(out_dir),
        "images": len(paths),
        "lists_version": LISTS_VERSION,
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))


def lists_digest(folder: Path) -> str:
    """Fingerprint of a split's list files (their names and contents)."""
    h = hashlib.sha256()
    for name in LIST_SUBSETS:
        f = folder / f"{name}.txt"
        if f.is_file():
            h.update(name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def load_official_lists(data_cfg, split_cfg, root: Path) -> tuple[FileData, Split]:
    """The reference's ImageNet-100-LT lists (:data:`OFFICIAL_LISTS`, in :func:`official_dir`),
    checked against their SHA-256 sums, on the ImageNet copy under ``root``."""
    d = data_cfg
    folder = official_dir(split_cfg, d.name)
    lists = {name: folder / file for name, file in OFFICIAL_LISTS.items()}
    missing = [p for p in lists.values() if not p.is_file()]
    if missing:
        raise DataError(
            f"official list {missing[0]} not found; with split.source=official, "
            f"split.official_dir must hold the reference's ImageNet-100-LT lists "
            f"({', '.join(OFFICIAL_LISTS.values())}); or use split.source=generated"
        )
    checked = verify_checksums(list(lists.values()))
    try:
        data, split = split_from_lists(
            root, lists, d.num_classes, int(split_cfg.index), d.name, d.val_per_class
        )
    except DataError as e:
        raise DataError(
            f"{e} [the reference's lists in {folder} name ILSVRC-2012 images as train/<wnid>/... "
            f"and val/<wnid>/...: data.root (SDCLR_IMAGENET) must be that root; or generate "
            f"lists from your folder with split.source=generated]"
        ) from e
    split.source = f"official lists in {folder} (the reference's ImageNet-100-LT; {checked})"
    return data, split


def load_file_dataset(data_cfg, split_cfg, splits_dir: Path) -> tuple[FileData, Split]:
    """The catalogue and split a run asks for: the user's list files, the reference's lists
    (``split.source=official``), or generated lists."""
    d = data_cfg
    root = Path(d.root).expanduser().absolute()
    given = {k: v for k, v in dict(d.lists).items() if v}
    if given:
        lists = {k: _resolve(v, root) for k, v in given.items()}
        return split_from_lists(
            root, lists, d.num_classes, int(split_cfg.index), d.name, d.val_per_class
        )
    if split_cfg.source == "official":
        return load_official_lists(d, split_cfg, root)
    scan = scan_data_folder(d)
    out = generated_lists_dir(splits_dir, d.name, lists_key(scan, d), int(split_cfg.index))
    meta_path = out / "meta.json"
    if not meta_path.is_file():
        generate_lists(d, int(split_cfg.index), out, scan)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(
            f"{meta_path} is unreadable ({e}); delete {out} to generate the lists again"
        ) from e
    lists = {s: out / f"{s}.txt" for s in LIST_SUBSETS if (out / f"{s}.txt").is_file()}
    if lists_digest(out) != meta.get("fingerprint"):
        raise DataError(
            f"the lists in {out} do not match their recorded fingerprint (edited by hand?); "
            f"delete {out} to generate them again"
        )
    labelled = bool(meta.get("labelled", True))
    if not labelled:
        return _unlabelled(root, lists, int(split_cfg.index), d.name, meta)
    try:
        data, split = split_from_lists(
            root,
            lists,
            len(meta["classes"]),
            int(split_cfg.index),
            d.name,
            d.val_per_class,
            class_names=list(meta["classes"]),
            # the scan just listed every one of these files: its key is the lists' folder,
            # and their fingerprint proves them unedited, so no file is looked up again
            check_exist=False,
        )
    except DataError as e:
        raise DataError(
            f"{e} [the lists in {out} were generated from {meta.get('root')}; delete {out} to "
            f"generate them again for this data]"
        ) from e
    split.source = f"generated lists in {out} ({meta.get('profile')})"
    return data, split


def _unlabelled(
    root: Path, lists: dict[str, Path], index: int, dataset: str, meta: dict
) -> tuple[FileData, Split]:
    paths, labels = read_list(lists["D_i"])
    check_files_exist(root, paths, f"the list {lists['D_i']}")
    every = np.arange(len(paths))
    empty = np.zeros(0, dtype=np.int64)
    split = Split(
        dataset,
        index,
        1,
        every,
        empty,
        every,
        empty,
        empty,
        len(paths),
        items_fingerprint(paths, labels),
        f"unlabelled folder {meta.get('root')}",
    )
    data = FileData(root, paths, labels, [], empty, [UNLABELLED], f"{root} (unlabelled)", False)
    return data, split
