"""``python -m sdclr.splits [--out DIR] [overrides...]``: write the long-tailed split files (or,
for image folders, the split lists) ahead of time, by default where a run with
``split.source=generated`` reads them (``split.dir``, else ``<data.cache_dir>/splits``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sdclr.config.compose import compose_config
from sdclr.config.derived import uses_files
from sdclr.data.arrays import load_arrays
from sdclr.data.files import generate_lists, generated_lists_dir, lists_key, scan_data_folder
from sdclr.data.splits import (
    SUBSETS,
    Recipe,
    generate_split,
    save_split,
    split_path,
    splits_dir,
)
from sdclr.errors import SdclrError


def main(argv: list[str] | None = None) -> int:
    """``python -m sdclr.splits [--out DIR] [hydra overrides...]``: write split files."""
    parser = argparse.ArgumentParser(
        prog="python -m sdclr.splits",
        description="Generate the five long-tailed splits for a dataset and write them as "
        ".npz files tied to the data's label fingerprint.",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="splits directory (default: split.dir, else <data.cache_dir>/splits, which "
        "SDCLR_CACHE sets: where a run reads generated splits)",
    )
    parser.add_argument("--splits", default="1,2,3,4,5", help="comma-separated split indices")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data=cifar10_lt")
    args = parser.parse_args(argv)

    try:
        cfg = compose_config(args.overrides)
        out = Path(args.out) if args.out else splits_dir(cfg.split, cfg.data.cache_dir)
        if uses_files(cfg):  # image folders: lists in <out>/<name>/<folder key>/split<i>/
            return _write_file_lists(cfg, [int(s) for s in args.splits.split(",")], out)
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
            path = split_path(cfg.data.name, i, out, Recipe.of(cfg.data))
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


def _write_file_lists(cfg, indices: list[int], out: Path) -> int:
    scan = scan_data_folder(cfg.data)
    for i in indices:
        folder = generated_lists_dir(out, cfg.data.name, lists_key(scan, cfg.data), i)
        if (folder / "meta.json").is_file():
            print(f"{folder}: exists (delete it to generate again)")
            continue
        generate_lists(cfg.data, i, folder, scan)
        meta = json.loads((folder / "meta.json").read_text())
        print(f"{folder}: {meta['images']} training images, D_i profile {meta['profile']}")
    return 0
