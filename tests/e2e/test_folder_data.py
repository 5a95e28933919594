"""Runs through data=folder and the list-file path on a small ImageNet-style tree cut from
the real Tiny ImageNet copy (conftest's ``tree``: real JPEG and PNG files of varied sizes,
a long-tailed count profile): a folder and its generated lists end to end, an unlabelled
folder, and a list naming a missing image."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from imagetree import TREE_COUNTS, folder_args, write_list
from runs import sdclr

from sdclr.data.files import scan_folder

REPO = Path(__file__).resolve().parents[2]


TINY = ["backbone=resnet18", "backbone.channels=[8,16,32,64]"]


SMALL_RUN = [
    "data.image_size=32",
    "data.eval_resize=36",
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0",
    "pretrain.batch_size=16",
    "linear.epochs=1",
    "fewshot.epochs=1",
    "linear.eval_batch_size=64",
    "fewshot.eval_batch_size=64",
    "logger=none",
]


def _run(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return sdclr(args, env, cwd=cwd)


def test_folder_and_list_file_runs_end_to_end(tree, tmp_path, env):
    # data=folder: lists generated from the tree, images decoded per batch by 2 workers
    job = tmp_path / "folder-job"
    r = _run(
        [
            *folder_args(tree),
            "data.workers=2",
            f"split.dir={tmp_path / 'splits'}",
            f"hydra.run.dir={job}",
            *TINY,
            *SMALL_RUN,
        ],
        env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((job / "metrics.json").read_text())
    assert m["pretrain"]["split_counts"]["D_i"] == [c - 2 for c in TREE_COUNTS]
    assert m["linear"]["groups"]["medium"] and m["linear"]["groups"]["few"]
    assert m["fewshot"]["train_images"] == 2 * 12
    assert "decoded per batch" in m["run"]["data_source"]

    # the list-file path, through the ImageNet-100-LT config, with the resized cache
    (lists,) = (tmp_path / "splits" / "folder").glob("*/split1")
    job2 = tmp_path / "lists-job"
    r = _run(
        [
            "data=imagenet100_lt",
            f"data.root={tree}",
            "data.num_classes=12",
            *[f"data.lists.{s}={lists / s}.txt" for s in ("pool", "val", "test", "D_i", "S_b")],
            "data.cache_size=40",
            f"data.cache_dir={tmp_path / 'cache'}",
            f"hydra.run.dir={job2}",
            *TINY,
            *SMALL_RUN,
        ],
        env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m2 = json.loads((job2 / "metrics.json").read_text())
    assert m2["pretrain"]["split_counts"]["D_i"] == m["pretrain"]["split_counts"]["D_i"]
    assert m2["run"]["prune_ratio"] == 0.3 and "resized cache 40 px" in m2["run"]["data_source"]
    assert len(list((tmp_path / "cache").glob("files-*.npy"))) == 2  # train and test


def test_unlabelled_folder_pretrains_and_refuses_probes(tree, tmp_path, env):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list((tree / "train").rglob("*.JPEG"))[:40]:
        shutil.copy(f, flat / f.name)
    common = [
        "data=folder",
        f"data.root={flat}",
        f"split.dir={tmp_path / 'splits'}",
        "data.workers=0",
        *TINY,
        *SMALL_RUN,
    ]
    r = _run([*common, "stage=pretrain", f"hydra.run.dir={tmp_path / 'ok'}"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ok" / "checkpoints" / "pretrain.pt").is_file()
    r = _run([*common, f"hydra.run.dir={tmp_path / 'probe'}"], env)
    assert r.returncode == 2
    assert "no class folders" in r.stderr and "stage=pretrain" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_list_naming_a_missing_image_stops_the_run_cleanly(tree, tmp_path, env):
    scan = scan_folder(tree, "train", "val")
    lines = [f"{p} {y}" for p, y in scan.train] + ["train/n01443537/gone.JPEG 0"]
    pool = write_list(tmp_path / "pool.txt", lines)
    test = write_list(tmp_path / "test.txt", [f"{p} {y}" for p, y in scan.test])
    r = _run(
        [
            "data=imagenet100_lt",
            f"data.root={tree}",
            "data.num_classes=12",
            f"data.lists.pool={pool}",
            f"data.lists.D_i={pool}",
            f"data.lists.val={pool}",
            f"data.lists.test={test}",
            f"hydra.run.dir={tmp_path / 'job'}",
            *TINY,
            *SMALL_RUN,
        ],
        env,
    )
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and "gone.JPEG" in err[0] and "data.root" in err[0]
