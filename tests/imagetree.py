"""Small ImageNet-style image trees for tests, cut from the real Tiny ImageNet copy.

Real JPEG files, re-encoded at varied sizes and aspect ratios, with a long-tailed count
profile: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG``. The image-file tests
share one such tree (conftest's ``tree`` fixture, TREE_COUNTS) and write list files with
``write_list``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

TREE_COUNTS = [60, 45, 34, 26, 20, 15, 11, 9, 8, 7, 6, 6]  # 12 classes, long-tailed


def folder_args(tree: Path) -> list[str]:
    """``data=folder`` on a tree written by :func:`write_tree`: its val/ as the test set, 2
    validation and 2 few-shot images per class (the smallest classes hold 6)."""
    return [
        "data=folder",
        f"data.root={tree}",
        "data.test_dir=val",
        "data.val_per_class=2",
        "data.fewshot_per_class=2",
    ]


#: A run on such a tree small enough for a test: 32 px images, the narrow ResNet-18, one
#: pretraining epoch of batches of 16, no warm-up.
SMALL_FOLDER_RUN = [
    "data.image_size=32",
    "data.eval_resize=36",
    "backbone.channels=[8,16,32,64]",
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0",
    "pretrain.batch_size=16",
]


def tiny_imagenet_images(
    archive: Path, classes: int, train_per_class: int, test_per_class: int
) -> dict[str, dict[str, list[bytes]]]:
    """The first ``classes`` wnids (sorted) with their first images, as JPEG bytes."""
    want: dict[str, dict[str, list[bytes]]] = {"train": {}, "val": {}}
    limit = {"train": train_per_class, "val": test_per_class}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar if m.isfile() and m.name.endswith(".JPEG")]
        wnids = sorted({Path(m.name).parts[1] for m in members if m.name.startswith("train/")})
        chosen = set(wnids[:classes])
        for m in sorted(members, key=lambda m: m.name):
            parts = Path(m.name).parts
            if len(parts) != 3 or parts[0] not in want or parts[1] not in chosen:
                continue
            bucket = want[parts[0]].setdefault(parts[1], [])
            if len(bucket) < limit[parts[0]]:
                bucket.append(tar.extractfile(m).read())  # type: ignore[union-attr]
    return want


def write_tree(
    root: Path,
    archive: Path,
    counts: list[int],
    test_per_class: int = 6,
    seed: int = 0,
    min_size: int = 36,
    max_size: int = 80,
    with_test: bool = True,
    train_dir: str | None = "train",
) -> list[str]:
    """Write a tree with ``counts[c]`` training images for class c; returns the wnids."""
    rng = np.random.default_rng(seed)
    images = tiny_imagenet_images(archive, len(counts), max(counts), test_per_class)
    wnids = sorted(images["train"])
    base = root / train_dir if train_dir else root
    for c, wnid in enumerate(wnids):
        for split, n, folder in (
            ("train", counts[c], base / wnid),
            ("val", test_per_class if with_test else 0, root / "val" / wnid),
        ):
            if n == 0:
                continue
            folder.mkdir(parents=True, exist_ok=True)
            for i, blob in enumerate(images[split][wnid][:n]):
                w, h = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
                with Image.open(io.BytesIO(blob)) as im:
                    im = im.convert("RGB").resize((w, h), Image.BICUBIC)
                    ext = ".png" if i % 7 == 3 else ".JPEG"  # a few PNGs as well
                    im.save(folder / f"{wnid}_{i}{ext}", quality=90)
    return wnids


def write_list(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path``, one a line (a list file: ``relative/path label``)."""
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path
