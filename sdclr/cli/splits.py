"""``python -m sdclr.splits [--out DIR] [overrides...]``: write the long-tailed split files (or,
for image folders, the split lists) ahead of time."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sdclr.config.compose import compose_config
from sdclr.config.derived import uses_files
from sdclr.data.arrays import load_arrays
from sdclr.data.files import generate_lists, generated_lists_dir
from sdclr.data.splits import SUBSETS, generate_split, save_split, split_path
from sdclr.errors import SdclrError
from sdclr.utils.io import SPLITS_DIR


def main(argv: list[str] | None = None) -> int:
    """``python -m sdclr.splits [--out DIR] [hydra overrides...]``: write split files."""
    parser = argparse.ArgumentParser(
        prog="python -m sdclr.splits",
        description="Generate the five long-tailed splits for a dataset and write them as "
        ".npz files tied to the data's label fingerprint.",
    )
    parser.add_argument("--out", default=str(SPLITS_DIR), help="splits directory")
    parser.add_argument("--splits", default="1,2,3,4,5", help="comma-separated split indices")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=cifar10_lt")
    args = parser.parse_args(argv)

    try:
        cfg = compose_config(args.overrides)
        if uses_files(cfg):  # image-file datasets: list files under <out>/<name>/split<i>/
            return _write_file_lists(cfg, [int(s) for s in args.splits.split(",")], args.out)
        data = load_arrays(cfg)
        for i in [int(s) for s in args.splits.split(",")]:
            split = generate_split(
                data.train_y,
                cfg.data.num_classes,
                i,
                cfg.data.val_per_class,
                cfg.data.imbalance_factor,
                cfg.data.fewshot_per_class,
                cfg.data.name,
            )
            path = split_path(cfg.data.name, i, Path(args.out))
            save_split(split, path)
            counts = {s: split.counts(s, data.train_y) for s in SUBSETS}
            order = np.argsort(-counts["D_i"], kind="stable")
            print(
                f"{path}: D_i {len(split.D_i)} (classes largest first: "
                f"{' '.join(map(str, order))}; counts {counts['D_i'][order].tolist()}), "
                f"D_b {len(split.D_b)}, S_b {len(split.S_b)}, pool {len(split.pool)}, "
                f"val {len(split.val)}, fingerprint {split.fingerprint}"
            )
    except SdclrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _write_file_lists(cfg, indices: list[int], out: str) -> int:
    for i in indices:
        folder = generated_lists_dir(Path(out), cfg.data.name, i)
        if (folder / "meta.json").is_file():
            print(f"{folder}: exists (delete it to generate again)")
            continue
        generate_lists(cfg.data, i, folder)
        meta = json.loads((folder / "meta.json").read_text())
        print(f"{folder}: {meta['images']} training images, D_i profile {meta['profile']}")
    return 0
