"""Long-tailed splits: the reference index files, the seeded generator, and split files.

The published splits are the reference code's own index files (VITA-Group/SDCLR at f1490fc),
shipped in ``splits/official/`` with their SHA-256 checksums: ``split.source=official``, the
default of cifar10_lt, cifar100_lt and imagenet100_lt. ``split.source=generated`` draws splits
with the same profile instead (other classes per group, other images), for other datasets,
profiles and ablations.

Protocol (protocol.md section 3), for a dataset with C classes and n images per class:

* the training set is divided once, for all splits, into a balanced probe pool
  (n - v per class) and a held-out validation set (v per class);
* split s draws its own class order; class k of that order gets
  floor(P * (1/imbalance)^(k/(C-1))) images of the pool (P = pool images per class): D_i;
* D_b, the balanced control, has floor(|D_i| / C) images per class;
* S_b, the few-shot probe set, has the few-shot count per class and lies inside both.

Inside each class the pool is shuffled once per split and every subset takes a prefix of that
shuffle, which makes S_b a subset of D_i and of D_b by construction (CIFAR). ImageNet-style
splits draw S_b apart from D_i, from the class's whole pool, as the reference's 1 % list was.

A split file (``.npz``) records the number of training images and a fingerprint of their
labels, so it can never be applied to another copy or order of the data by accident. A
generated file is also named by its :class:`Recipe` (imbalance factor, validation and few-shot
images per class), and a generated split read back is checked to hold the recipe asked for, so
``data.imbalance_factor=50`` never trains on the factor-100 file of the same index.
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdclr.data.arrays import base_name, labels_fingerprint
from sdclr.errors import DataError
from sdclr.utils.io import OFFICIAL_SPLITS_DIR, SPLITS_DIR, write_atomically

GENERATOR_VERSION = 1
POOL_SEED = 0  # the pool/validation division is shared by all splits
SUBSETS = ("D_i", "D_b", "S_b")
REFERENCE = "VITA-Group/SDCLR at f1490fc"  # where the files in splits/official come from
CHECKSUMS = "SHA256SUMS"  # `sha256sum` format, in a folder of official files or the one above


@dataclass
class Split:
    """Index arrays into the training set, plus what they were made for."""

    dataset: str
    index: int
    num_classes: int
    pool: np.ndarray
    val: np.ndarray
    D_i: np.ndarray
    D_b: np.ndarray
    S_b: np.ndarray
    n_train: int
    fingerprint: str
    source: str
    # Test images carved from the training set (image folders without a test folder); None
    # when the dataset has its own test set.
    test: np.ndarray | None = None

    @property
    def kind(self) -> str:
        """Where the split comes from, in one word (the first of ``source``): official (the
        reference's files), generated, file, lists (the user's list files) or unlabelled."""
        return self.source.split(" ", 1)[0].rstrip(",")

    def subset(self, name: str) -> np.ndarray:
        return {
            "pool": self.pool,
            "val": self.val,
            "D_i": self.D_i,
            "D_b": self.D_b,
            "S_b": self.S_b,
            "test": self.test,
        }[name]

    def counts(self, name: str, labels: np.ndarray) -> np.ndarray:
        return np.bincount(labels[self.subset(name)], minlength=self.num_classes)


@dataclass(frozen=True)
class Recipe:
    """What a generated CIFAR-style split depends on besides its index and the labels: the
    imbalance factor of D_i's profile and the validation and few-shot images per class (the
    data config's ``imbalance_factor``, ``val_per_class``, ``fewshot_per_class``)."""

    imbalance_factor: float
    val_per_class: int
    fewshot_per_class: int

    @classmethod
    def of(cls, data_cfg) -> Recipe:
        d = data_cfg
        return cls(float(d.imbalance_factor), int(d.val_per_class), int(d.fewshot_per_class))

    @property
    def tag(self) -> str:
        """The file-name part, e.g. ``if100_val500_fs45``."""
        return f"if{self.imbalance_factor:g}_val{self.val_per_class}_fs{self.fewshot_per_class}"

    def mismatch(self, split: Split, labels: np.ndarray) -> str | None:
        """How ``split`` differs from what this recipe draws on ``labels``, as the config keys
        that would have made it; None when it is this recipe's."""
        count = {name: split.counts(name, labels) for name in ("pool", "val", "S_b")}
        if (count["val"] != self.val_per_class).any():
            return f"{_span(count['val'])} validation images per class, not {self.val_per_class}"
        if (count["S_b"] != self.fewshot_per_class).any():
            return f"{_span(count['S_b'])} few-shot images per class, not {self.fewshot_per_class}"
        profile = profile_counts(int(count["pool"].min()), split.num_classes, self.imbalance_factor)
        held = sorted(split.counts("D_i", labels).tolist(), reverse=True)
        if held != profile:
            return (
                f"a D_i of {held[0]} -> {held[-1]} images per class, not the imbalance factor "
                f"{self.imbalance_factor:g}'s {profile[0]} -> {profile[-1]}"
            )
        return None


def _span(counts: np.ndarray) -> str:
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low} to {high}"


def profile_counts(head: int, num_classes: int, imbalance_factor: float) -> list[int]:
    """Exponential long-tail profile: floor(head * (1/imbalance)^(k/(C-1)))."""
    mu = 1.0 / imbalance_factor
    return [math.floor(head * mu ** (k / (num_classes - 1))) for k in range(num_classes)]


def pareto_counts(head: int, tail: int, num_classes: int, exponent: float) -> list[int]:
    """Pareto (type II) rank-size profile from ``head`` down to ``tail`` images:
    floor(head * (1 + k * s)^-exponent), with s chosen so that the last class gets ``tail``.

    ImageNet-LT was drawn "from a Pareto distribution with alpha 6" without a formula; with
    exponent 3 this law gives 116,711 images for 1,000 classes from 1280 to 5 (ImageNet-LT:
    115,846) and 12,988 for 100 classes from 1280 to 6 (ImageNet-100-LT: 12,205). For the
    published sets, use their list files.
    """
    if num_classes == 1:
        return [head]
    s = ((head / tail) ** (1.0 / exponent) - 1.0) / (num_classes - 1)
    counts = [math.floor(head * (1.0 + k * s) ** (-exponent) + 1e-9) for k in range(num_classes)]
    counts[-1] = max(counts[-1], tail)  # guard the float rounding of the last class
    return counts


def long_tail_profile(
    kind: str,
    num_classes: int,
    head: int,
    imbalance_factor: float | None = None,
    tail: int | None = None,
    exponent: float = 3.0,
) -> list[int]:
    """Per-rank image counts of D_i: ``exp`` (head * (1/imbalance)^(k/(C-1)); the imbalance
    is head/tail when ``tail`` is given) or ``pareto`` (:func:`pareto_counts`)."""
    if kind == "exp":
        factor = head / tail if tail else float(imbalance_factor or 1.0)
        return profile_counts(head, num_classes, factor)
    if kind == "pareto":
        if not tail:
            tail = max(1, math.floor(head / float(imbalance_factor or 1.0)))
        return pareto_counts(head, tail, num_classes, exponent)
    raise DataError(f"unknown long-tail profile '{kind}'; use exp, pareto or none")


def _assign_ranks(order: np.ndarray, pool_sizes: list[int], profile: list[int]) -> list[int]:
    """Class for each rank of the profile: the first class of the split's random order whose
    pool can supply that many images. With pools all at least the head count (CIFAR) this is
    the random order itself; with uneven pools (ImageNet) big ranks go to big classes."""
    remaining = [int(c) for c in order]
    chosen = []
    for k, need in enumerate(profile):
        pick = next((c for c in remaining if pool_sizes[c] >= need), None)
        if pick is None:
            raise DataError(
                f"no class has the {need} pool images that rank {k + 1} of the long-tail "
                f"profile needs (largest remaining pool: "
                f"{max(pool_sizes[c] for c in remaining)}); lower data.head_count"
            )
        remaining.remove(pick)
        chosen.append(pick)
    return chosen


def generate_split(
    labels: np.ndarray,
    num_classes: int,
    index: int,
    val_per_class: int,
    imbalance_factor: float,
    fewshot_per_class: int,
    dataset: str = "",
    profile: list[int] | str | None = None,
    test_per_class: int = 0,
    fewshot_in_d_i: bool = True,
) -> Split:
    """Build split ``index`` (1-based) deterministically from the training labels.

    ``profile`` None is the CIFAR rule (exponential from the smallest pool, ``imbalance_factor``);
    a list gives explicit per-rank counts (ImageNet-style profiles); ``"none"`` keeps every pool
    image in D_i (a collection that is long-tailed already). ``test_per_class`` carves a test
    set too, for image folders without one. ``fewshot_in_d_i`` True (CIFAR) takes S_b as a
    prefix of D_i; False (ImageNet-style) draws S_b apart from D_i, from the class's whole pool
    and from a random stream of its own, as the reference's 1 % list was drawn (12 per class,
    mostly outside D_i): ImageNet's few-shot set has more images per class than its tail
    classes, and it does not depend on the profile.
    """
    labels = np.asarray(labels, dtype=np.int64)
    per_class = np.bincount(labels, minlength=num_classes)
    if len(per_class) != num_classes:
        raise DataError(
            f"labels go up to {len(per_class) - 1} but the data config says {num_classes} classes"
        )
    pool_by_class, val, test = _divide_pool(labels, num_classes, val_per_class, test_per_class)
    pool_sizes = [len(p) for p in pool_by_class]
    keep_all = isinstance(profile, str) and profile == "none"
    counts, balanced = _d_i_counts(pool_sizes, profile, imbalance_factor)
    _check_fewshot(fewshot_per_class, pool_sizes, counts, fewshot_in_d_i)
    sets = _draw_subsets(
        pool_by_class, index, counts, balanced, keep_all, fewshot_per_class, fewshot_in_d_i
    )
    return Split(
        dataset=dataset,
        index=index,
        num_classes=num_classes,
        pool=np.sort(np.concatenate(pool_by_class)),
        val=np.sort(np.concatenate(val)),
        **{name: np.sort(np.concatenate(v)) for name, v in sets.items()},
        n_train=len(labels),
        fingerprint=labels_fingerprint(labels),
        source=f"generated (seed {index}, generator v{GENERATOR_VERSION})",
        test=np.sort(np.concatenate(test)) if test_per_class else None,
    )


def _divide_pool(
    labels: np.ndarray, num_classes: int, val_per_class: int, test_per_class: int
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Each class's images, shuffled once for all splits (:data:`POOL_SEED`), divided into
    test (first), validation and the probe pool: per class, ``(pool, val, test)``."""
    rng_pool = np.random.default_rng([POOL_SEED, GENERATOR_VERSION])
    pool_by_class, val, test = [], [], []
    held = val_per_class + test_per_class
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= held:
            raise DataError(
                f"class {c} has {len(idx)} training images, not enough for "
                f"{val_per_class} validation + {test_per_class} test images plus at least one "
                f"for training; lower data.val_per_class"
                + (" / data.test_per_class or add a test folder" if test_per_class else "")
            )
        idx = rng_pool.permutation(idx)
        test.append(idx[:test_per_class])
        val.append(idx[test_per_class:held])
        pool_by_class.append(idx[held:])
    return pool_by_class, val, test


def _d_i_counts(
    pool_sizes: list[int], profile: list[int] | str | None, imbalance_factor: float
) -> tuple[list[int], int]:
    """D_i's images per rank (largest first) and D_b's per class: the CIFAR rule, the given
    profile, or (``"none"``) every pool image with D_b the largest balanced subset no bigger
    than D_i."""
    num_classes = len(pool_sizes)
    if isinstance(profile, str) and profile == "none":
        counts = sorted(pool_sizes, reverse=True)
        return counts, min(sum(counts) // num_classes, min(pool_sizes))
    if profile is None:
        counts = profile_counts(int(min(pool_sizes)), num_classes, imbalance_factor)
    else:
        counts = [int(c) for c in profile]
        if len(counts) != num_classes:
            raise DataError(f"the profile has {len(counts)} counts for {num_classes} classes")
    return counts, sum(counts) // num_classes


def _check_fewshot(
    fewshot_per_class: int, pool_sizes: list[int], counts: list[int], in_d_i: bool
) -> None:
    if fewshot_per_class < 1:
        raise DataError("data.fewshot_per_class must be >= 1")
    if in_d_i and fewshot_per_class > min(counts):
        raise DataError(
            f"the few-shot set asks for {fewshot_per_class} images per class, but "
            f"the smallest class of D_i has {min(counts)}; lower "
            f"data.fewshot_per_class or data.imbalance_factor"
        )
    short = [c for c in range(len(pool_sizes)) if pool_sizes[c] < fewshot_per_class]
    if short:
        raise DataError(
            f"class {short[0]} has {pool_sizes[short[0]]} pool images, fewer than "
            f"data.fewshot_per_class={fewshot_per_class}; lower it"
        )


def _draw_subsets(
    pool_by_class: list[np.ndarray],
    index: int,
    counts: list[int],
    balanced: int,
    keep_all: bool,
    fewshot_per_class: int,
    fewshot_in_d_i: bool,
) -> dict[str, list[np.ndarray]]:
    """Split ``index``'s draw: its class order (rank k to a class, :func:`_assign_ranks`), and
    per class a shuffle of the pool whose prefixes are D_i, D_b and (CIFAR) S_b; S_b of
    ImageNet-style splits from a stream of its own, so that D_i and D_b stay as they were."""
    num_classes = len(pool_by_class)
    rng = np.random.default_rng([index, GENERATOR_VERSION])
    rng_fewshot = np.random.default_rng([index, GENERATOR_VERSION, 1])
    order = rng.permutation(num_classes)  # order[k] = the class with the k-th largest count
    if keep_all:
        ranked = [int(c) for c in order]
    else:
        ranked = _assign_ranks(order, [len(p) for p in pool_by_class], counts)
    sets: dict[str, list[np.ndarray]] = {name: [] for name in SUBSETS}
    for k, c in enumerate(ranked):
        shuffled = rng.permutation(pool_by_class[c])
        sets["D_i"].append(shuffled if keep_all else shuffled[: counts[k]])
        sets["D_b"].append(shuffled[:balanced])
        if fewshot_in_d_i:
            sets["S_b"].append(shuffled[:fewshot_per_class])
    if not fewshot_in_d_i:
        sets["S_b"] = [
            rng_fewshot.permutation(pool_by_class[c])[:fewshot_per_class]
            for c in range(num_classes)
        ]
    return sets


# --- files --------------------------------------------------------------------------------


def split_path(
    dataset: str, index: int, splits_dir: Path = SPLITS_DIR, recipe: Recipe | None = None
) -> Path:
    """``<splits_dir>/<cifar10|cifar100|...>/split<i>_<recipe tag>.npz``, where generated splits
    are written; without a recipe ``split<i>.npz``, the name of the split files sdclr ships
    (read-only; their recipe is checked by content when they are read)."""
    name = f"split{index}_{recipe.tag}.npz" if recipe is not None else f"split{index}.npz"
    return Path(splits_dir) / base_name(dataset) / name


def save_split(split: Split, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "dataset": split.dataset,
        "index": split.index,
        "num_classes": split.num_classes,
        "n_train": split.n_train,
        "fingerprint": split.fingerprint,
        "source": split.source,
        "generator_version": GENERATOR_VERSION,
    }
    subsets = {name: split.subset(name) for name in SUBSETS}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy adds no suffix to the name
            np.savez_compressed(
                f, meta=np.array(json.dumps(meta)), pool=split.pool, val=split.val, **subsets
            )

    write_atomically(path, write)


def load_split_file(path: Path, labels: np.ndarray) -> Split:
    """Load a split file and check it was made for exactly this training set."""
    if not path.is_file():
        raise DataError(f"split file {path} not found; point split.file at an existing one")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k].astype(np.int64) for k in ("pool", "val", *SUBSETS)}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(
            f"split file {path} is not a valid sdclr split file ({e}); regenerate "
            f"it with `python -m sdclr.splits`"
        ) from e
    n, fp = len(labels), labels_fingerprint(labels)
    if meta["n_train"] != n or meta["fingerprint"] != fp:
        raise DataError(
            f"split file {path} was made for a training set of {meta['n_train']} images with "
            f"label fingerprint {meta['fingerprint']}, but the loaded data has {n} images with "
            f"fingerprint {fp}: the data is another copy or in another order. For the shared "
            f"CIFAR JPEG copy set data.order_labels to its labels file; otherwise generate "
            f"splits for this copy with `python -m sdclr.splits --out DIR` and pass "
            f"split.source=file split.file=DIR/...npz"
        )
    return Split(
        meta.get("dataset", ""),
        int(meta["index"]),
        int(meta["num_classes"]),
        arrays["pool"],
        arrays["val"],
        arrays["D_i"],
        arrays["D_b"],
        arrays["S_b"],
        n,
        fp,
        f"file {path}",
    )


def official_dir(split_cfg, dataset: str) -> Path:
    """Where ``split.source=official`` reads: ``split.official_dir``, or the copy of the
    reference's files for this dataset that sdclr ships (``splits/official/<cifar10|cifar100|
    imagenet100>`` in the repository, package data of an installed wheel)."""
    if split_cfg.official_dir:
        return Path(split_cfg.official_dir).expanduser()
    return OFFICIAL_SPLITS_DIR / base_name(dataset)


def ships_official_split(dataset: str) -> bool:
    """Whether sdclr ships the reference's split files for ``dataset`` (a data.name)."""
    return (OFFICIAL_SPLITS_DIR / base_name(dataset)).is_dir()


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _checksums_for(folder: Path) -> tuple[Path | None, dict[Path, str]]:
    """The SHA256SUMS of a folder of official files (in it, or in the folder above, as in
    ``splits/official``): its path and {resolved file path: digest}."""
    for sums in (folder / CHECKSUMS, folder.parent / CHECKSUMS):
        if sums.is_file():
            table = {}
            for line in sums.read_text().splitlines():
                digest, _, name = line.strip().partition(" ")
                if digest and name:
                    table[(sums.parent / name.strip().lstrip("*")).resolve()] = digest.lower()
            return sums, table
    return None, {}


def verify_checksums(files: list[Path]) -> str:
    """Check the reference's files against the SHA256SUMS next to them, and say how: a file
    that differs from its recorded digest is refused (it is not the reference's any more); a
    folder without SHA256SUMS (a user's own copy) is read unchecked."""
    files = [Path(f) for f in files]
    sums, table = _checksums_for(files[0].parent)
    checked = 0
    for f in files:
        want = table.get(f.resolve())
        if want is None:
            continue
        got = file_sha256(f)
        if got != want:
            raise DataError(
                f"{f} has SHA-256 {got[:16]}..., not the {want[:16]}... that {sums} records for "
                f"the reference's file: it was changed. Restore it from the repository (or "
                f"from {REFERENCE}), or use split.source=generated"
            )
        checked += 1
    if sums is None or checked == 0:
        return "not checked: no SHA256SUMS names them"
    if checked < len(files):
        return f"{checked} of {len(files)} files SHA-256 checked against {sums}"
    return f"SHA-256 checked against {sums}"


def official_files(directory: Path, index: int) -> dict[str, Path]:
    """The reference's index files of split ``index``: the pool, the validation set and the
    three subsets, under CIFAR-10's names (``trainIdxList.npy``, ``valIdxList.npy``,
    ``split<i>_D_i.npy``, ...) or the same names with a dataset prefix, as the reference names
    its CIFAR-100 files (``cifar100_trainIdxList.npy``, ``cifar100_split<i>_D_i.npy``, ...)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(
            f"the official split folder {directory} does not exist; point split.official_dir at "
            f"the reference's index files, or use split.source=generated"
        )
    prefixes = sorted(
        {f.name.removesuffix("trainIdxList.npy") for f in directory.glob("*trainIdxList.npy")}
    )
    if len(prefixes) > 1:
        raise DataError(
            f"{directory} holds the index files of several datasets "
            f"({', '.join(p + 'trainIdxList.npy' for p in prefixes)}); give split.official_dir "
            f"a folder with one"
        )
    prefix = prefixes[0] if prefixes else ""
    return {
        "pool": directory / f"{prefix}trainIdxList.npy",
        "val": directory / f"{prefix}valIdxList.npy",
        **{s: directory / f"{prefix}split{index}_{s}.npy" for s in SUBSETS},
    }


def load_official_split(
    directory: Path,
    index: int,
    labels: np.ndarray,
    num_classes: int,
    expected_profile: list[int],
    dataset: str = "",
) -> Split:
    """The reference code's ``.npy`` index files, which index torchvision's CIFAR order (the
    pool is its probe training list, ``val`` its validation list; for CIFAR-100 D_i and D_b
    also hold images of the 5,000 that are in neither, as in the reference)."""
    directory = Path(directory)
    files = official_files(directory, index)
    arrays = {}
    for f in files.values():
        if not f.is_file():
            raise DataError(
                f"official split file {f} not found; split.official_dir must hold "
                f"trainIdxList.npy, valIdxList.npy and split<i>_D_i/D_b/S_b.npy (or the same "
                f"names with a dataset prefix, as cifar100_trainIdxList.npy)"
            )
    checked = verify_checksums(list(files.values()))
    for key, f in files.items():
        try:
            # sorted, as every other split's arrays (the reference's files are in draw order)
            arrays[key] = np.sort(np.load(f).astype(np.int64).ravel())
        except (OSError, ValueError) as e:
            raise DataError(f"official split file {f} is not a readable .npy ({e})") from e
        if len(arrays[key]) and (arrays[key].min() < 0 or arrays[key].max() >= len(labels)):
            raise DataError(
                f"{f} indexes images up to {arrays[key].max()}, but the training "
                f"set has {len(labels)}; these files belong to another dataset"
            )
    counts = np.sort(np.bincount(labels[arrays["D_i"]], minlength=num_classes))[::-1]
    if list(counts) != list(expected_profile):
        val_counts = np.bincount(labels[arrays["val"]], minlength=num_classes)
        if (val_counts == val_counts[0]).all():
            # a balanced validation list: the data is in the files' order, so it is the config
            # that asks for another profile than the files hold
            expected = list(expected_profile)
            raise DataError(
                f"the official D_i of split {index} has {counts[0]} -> {counts[-1]} images per "
                f"class (imbalance {counts[0] / counts[-1]:g}), but data.imbalance_factor, "
                f"train_per_class and val_per_class ask for {expected[0]} -> {expected[-1]}: "
                f"the reference's files hold their one profile. For another, add "
                f"split.source=generated"
            )
        raise DataError(
            f"the official D_i of split {index} gives per-class counts {list(counts)} on this "
            f"data instead of the profile {list(expected_profile)}: the reference files index "
            f"CIFAR in torchvision's original order, and this copy is in another order. Use the "
            f"torchvision format, or set data.order_labels to the original-order labels file"
        )
    return Split(
        dataset,
        index,
        num_classes,
        arrays["pool"],
        arrays["val"],
        arrays["D_i"],
        arrays["D_b"],
        arrays["S_b"],
        len(labels),
        labels_fingerprint(labels),
        f"official files in {directory} (the reference's split {index}; {checked})",
    )


def paper_split_note(dataset: str, source: str) -> str | None:
    """For a run on a dataset whose published split the repository ships (cifar10_lt,
    cifar100_lt, imagenet100_lt) that generated its own instead: the line saying that its
    Many / Medium / Few groups are not the paper's. None otherwise."""
    if source.split(" ", 1)[0] != "generated" or not ships_official_split(dataset):
        return None
    return (
        f"NOTE: this split is not the paper's ({source}): its Many / Medium / Few groups hold "
        f"other classes and images than the published split, so they do not measure the same "
        f"classes as the published numbers (split.source=official reads the reference's split "
        f"files)"
    )


def splits_dir(split_cfg, cache_dir: str | Path) -> Path:
    """Where generated splits (and the file routes' generated lists) are read and written:
    ``split.dir``, or ``<cache_dir>/splits`` (``data.cache_dir``, which SDCLR_CACHE sets), a
    folder the user can write. Never the package: the split files sdclr ships
    (:data:`SPLITS_DIR`) are only read."""
    if split_cfg.dir:
        return Path(split_cfg.dir).expanduser()
    return Path(cache_dir).expanduser() / "splits"


def resolve_split(split_cfg, data_cfg, labels: np.ndarray) -> Split:
    """The split a run asks for: the reference files (:func:`official_dir`), a generated file,
    or an explicit file. A generated split is read from :func:`splits_dir`; without
    ``split.dir``, from the split files sdclr ships when that folder lacks it (CIFAR-10's
    committed ``cifar10/split<i>.npz``); when neither has it, it is generated and saved in
    :func:`splits_dir`."""
    profile = profile_counts(
        data_cfg.train_per_class - data_cfg.val_per_class,
        data_cfg.num_classes,
        data_cfg.imbalance_factor,
    )
    if split_cfg.source == "official":
        return load_official_split(
            official_dir(split_cfg, data_cfg.name),
            split_cfg.index,
            labels,
            data_cfg.num_classes,
            profile,
            data_cfg.name,
        )
    if split_cfg.source == "file":
        return load_split_file(Path(split_cfg.file).expanduser(), labels)
    recipe = Recipe.of(data_cfg)
    folder = splits_dir(split_cfg, data_cfg.cache_dir)
    path = split_path(data_cfg.name, split_cfg.index, folder, recipe)
    if path.is_file():
        return _with_recipe(load_split_file(path, labels), recipe, labels, path)
    shipped = split_path(data_cfg.name, split_cfg.index)
    if not split_cfg.dir and shipped.is_file():
        # the committed file: what the generator makes for the canonical order, read when it
        # was made with the recipe asked for (CIFAR-10's are imbalance 100, 500 val, 45 shots)
        split = load_split_file(shipped, labels)
        if recipe.mismatch(split, labels) is None:
            return split
    # Not generated yet (a CIFAR-100 copy seen for the first time, another imbalance factor):
    # generate, and keep the file in the user's splits folder.
    split = generate_split(
        labels,
        data_cfg.num_classes,
        split_cfg.index,
        data_cfg.val_per_class,
        data_cfg.imbalance_factor,
        data_cfg.fewshot_per_class,
        data_cfg.name,
    )
    try:
        save_split(split, path)
    except OSError:
        pass  # a folder it cannot write: the split is deterministic, so unsaved is safe
    return split


def _with_recipe(split: Split, recipe: Recipe, labels: np.ndarray, path: Path) -> Split:
    """``split``, read from ``path`` as the generated split of ``recipe``; an error when it
    holds another (a file renamed or written by hand)."""
    wrong = recipe.mismatch(split, labels)
    if wrong is not None:
        raise DataError(
            f"split file {path} holds {wrong}, which its name ({recipe.tag}) and the config "
            f"ask for; delete it to generate the split again, or pass a file of your own with "
            f"split.source=file split.file=PATH"
        )
    return split


# --- fraction -----------------------------------------------------------------------------


def stratified_fraction(
    indices: np.ndarray, labels: np.ndarray, fraction: float, seed: int = 0
) -> np.ndarray:
    """Keep max(1, round(fraction * n_c)) images of each class, chosen deterministically.

    Each image has a fixed random priority (from ``seed``); a class keeps its lowest-priority
    images, so smaller fractions give subsets of larger ones.
    """
    if fraction >= 1.0:
        return indices
    priority = np.random.default_rng([seed, 7]).permutation(len(labels))
    kept = []
    for c in np.unique(labels[indices]):
        idx = indices[labels[indices] == c]
        keep = max(1, int(round(fraction * len(idx))))
        kept.append(idx[np.argsort(priority[idx], kind="stable")[:keep]])
    return np.sort(np.concatenate(kept))


def apply_fraction(split: Split, labels: np.ndarray, fraction: float) -> Split:
    if fraction >= 1.0:
        return split
    sub = {
        name: stratified_fraction(split.subset(name), labels, fraction)
        for name in ("pool", "val", *SUBSETS)
    }
    return Split(
        split.dataset,
        split.index,
        split.num_classes,
        sub["pool"],
        sub["val"],
        sub["D_i"],
        sub["D_b"],
        sub["S_b"],
        split.n_train,
        split.fingerprint,
        f"{split.source}, fraction {fraction:g}",
        None if split.test is None else stratified_fraction(split.test, labels, fraction),
    )
