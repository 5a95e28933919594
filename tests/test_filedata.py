"""Image-file datasets: list files, image folders, profiles, per-batch decoding, and runs
through data=folder and the list-file path on a small ImageNet-style tree cut from the real
Tiny ImageNet copy (real JPEG and PNG files of varied sizes, a long-tailed count profile)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from imagetree import write_tree

from sdclr.data.banks import FileImages, decode_file
from sdclr.data.files import load_file_dataset, read_list, scan_folder, split_from_lists
from sdclr.data.splits import generate_split, long_tail_profile, pareto_counts, profile_counts
from sdclr.errors import DataError
from sdclr.eval.metrics import class_groups

REPO = Path(__file__).resolve().parent.parent
TREE_COUNTS = [60, 45, 34, 26, 20, 15, 11, 9, 8, 7, 6, 6]  # 12 classes, long-tailed
TINY = ["backbone=resnet18", "backbone.channels=[8,16,32,64]"]
SMALL_RUN = [
    "data.image_size=32",
    "data.eval_resize=36",
    "pretrain.epochs=1",
    "pretrain.batch_size=16",
    "linear.epochs=1",
    "fewshot.epochs=1",
    "linear.eval_batch_size=64",
    "fewshot.eval_batch_size=64",
    "logger=none",
]


@pytest.fixture(scope="session")
def tree(tmp_path_factory, data_root) -> Path:
    root = tmp_path_factory.mktemp("imagenet-style")
    write_tree(root, data_root / "tiny-imagenet-32.tar.gz", TREE_COUNTS, test_per_class=6)
    return root


def _cfg(**data):
    from omegaconf import OmegaConf

    from sdclr.config.compose import compose_config

    cfg = compose_config(["data=folder"])
    for k, v in data.items():
        OmegaConf.update(cfg, f"data.{k}", v, merge=False)
    return cfg


# --- profiles and generators -----------------------------------------------------------------


def test_profiles_match_the_published_sizes():
    im100 = pareto_counts(1280, 6, 100, 3.0)
    assert im100[0] == 1280 and im100[-1] == 6 and sum(im100) == 12988
    assert all(a >= b for a, b in zip(im100, im100[1:]))
    assert sum(pareto_counts(1280, 5, 1000, 3.0)) == 116711  # ImageNet-LT: 115,846
    exp = long_tail_profile("exp", 1000, 1280, tail=5)
    assert exp[0] == 1280 and exp[-1] == 5
    assert abs(sum(exp) - 229_700) < 300  # protocol.md: about 229.7k
    assert exp == profile_counts(1280, 1000, 256)
    with pytest.raises(DataError, match="unknown long-tail profile"):
        long_tail_profile("zipf", 10, 100, 10)


def test_generated_imagenet_style_split_follows_the_profile():
    rng = np.random.default_rng(0)
    sizes = rng.integers(120, 330, size=20)  # uneven classes, as in ImageNet
    labels = rng.permutation(np.repeat(np.arange(20), sizes))
    profile = long_tail_profile("pareto", 20, 250, tail=5)
    s = generate_split(
        labels, 20, 1, 10, 50, 12, "x", profile=profile, test_per_class=8, fewshot_in_d_i=False
    )
    counts = np.bincount(labels[s.D_i], minlength=20)
    assert sorted(counts.tolist(), reverse=True) == profile
    assert set(s.S_b) <= set(s.pool) and set(s.D_i) <= set(s.pool)
    assert np.bincount(labels[s.S_b], minlength=20).tolist() == [12] * 20
    assert len(set(np.bincount(labels[s.D_b], minlength=20))) == 1  # balanced
    assert np.bincount(labels[s.test], minlength=20).tolist() == [8] * 20
    assert np.bincount(labels[s.val], minlength=20).tolist() == [10] * 20
    parts = [set(s.pool), set(s.val), set(s.test)]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1 :])
    again = generate_split(
        labels, 20, 1, 10, 50, 12, "x", profile=profile, test_per_class=8, fewshot_in_d_i=False
    )
    assert np.array_equal(again.D_i, s.D_i)  # deterministic


def test_profile_needing_more_images_than_any_class_is_refused():
    labels = np.repeat(np.arange(4), 50)
    with pytest.raises(DataError, match="lower data.head_count"):
        generate_split(labels, 4, 1, 5, 10, 2, profile=[100, 40, 20, 10], fewshot_in_d_i=False)


def test_group_assignment_by_thresholds():
    g = class_groups([150, 101, 100, 20, 19, 5], "thresholds")
    assert g == {"many": [0, 1], "medium": [2, 3], "few": [4, 5]}


# --- scanning, generated lists ----------------------------------------------------------------


def test_scan_finds_classes_and_the_test_folder(tree):
    scan = scan_folder(tree, "train", "val")
    assert scan.labelled and len(scan.classes) == len(TREE_COUNTS)
    assert np.bincount([y for _, y in scan.train]).tolist() == TREE_COUNTS
    assert scan.test is not None and len(scan.test) == 6 * len(TREE_COUNTS)
    assert all(p.startswith("val/") for p, _ in scan.test)


def test_generated_lists_are_saved_with_their_fingerprint(tree, tmp_path):
    cfg = _cfg(root=str(tree), test_dir="val", val_per_class=2, fewshot_per_class=2)
    data, split = load_file_dataset(cfg.data, cfg.split, tmp_path)
    out = tmp_path / "folder" / "split1"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == data.classes and meta["test"] == "val/ folder"
    d_i = np.bincount(data.train_y[split.D_i], minlength=12)
    assert d_i.tolist() == [c - 2 for c in TREE_COUNTS]  # profile none: the folder as it is
    assert len(data.test_paths) == 6 * 12
    again, split2 = load_file_dataset(cfg.data, cfg.split, tmp_path)  # read back, no rescan
    assert again.train_paths == data.train_paths and np.array_equal(split2.D_i, split.D_i)
    (out / "D_i.txt").write_text((out / "D_i.txt").read_text().replace(" 0\n", " 1\n", 1))
    with pytest.raises(DataError, match="fingerprint"):
        load_file_dataset(cfg.data, cfg.split, tmp_path)


def test_exp_profile_drawn_from_a_folder_and_a_carved_test_set(tree, tmp_path):
    root = tmp_path / "classes"
    shutil.copytree(tree / "train", root)  # <root>/<class>/*, no test folder
    cfg = _cfg(
        root=str(root),
        profile="exp",
        head_count=20,
        tail_count=2,
        val_per_class=1,
        test_per_class=2,
        fewshot_per_class=1,
    )
    data, split = load_file_dataset(cfg.data, cfg.split, tmp_path / "splits")
    counts = sorted(np.bincount(data.train_y[split.D_i], minlength=12).tolist(), reverse=True)
    assert counts == long_tail_profile("exp", 12, 20, tail=2)
    assert np.bincount(data.test_y, minlength=12).tolist() == [2] * 12
    assert not set(data.test_paths) & {data.train_paths[i] for i in split.pool}
    # too few images for validation + test + training
    cfg = _cfg(root=str(root), val_per_class=2, test_per_class=4, fewshot_per_class=1)
    with pytest.raises(DataError, match="not enough for 2 validation \\+ 4 test"):
        load_file_dataset(cfg.data, cfg.split, tmp_path / "splits2")


def test_flat_folder_is_unlabelled(tree, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in list((tree / "train").rglob("*.JPEG"))[:20]:
        shutil.copy(f, flat / f.name)
    cfg = _cfg(root=str(flat))
    data, split = load_file_dataset(cfg.data, cfg.split, tmp_path / "splits")
    assert not data.labelled and len(split.D_i) == 20 and data.classes == ["unlabelled"]


# --- list files and their errors --------------------------------------------------------------


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{ln}\n" for ln in lines))
    return path


def test_list_errors_name_the_problem(tree, tmp_path):
    scan = scan_folder(tree, "train", "val")
    train = [f"{p} {y}" for p, y in scan.train]
    test = [f"{p} {y}" for p, y in scan.test]
    pool = _write(tmp_path / "pool.txt", train)
    good_test = _write(tmp_path / "test.txt", test)
    lists = {"pool": pool, "D_i": pool, "val": pool, "test": good_test}
    data, split = split_from_lists(tree, lists, 12, 1, "x", 2)
    assert data.classes == scan.classes and len(split.D_i) == len(train)
    # no pool list: every image of the D_i classes' folders except the validation images
    d_i = _write(tmp_path / "d_i.txt", train[::3])
    val = _write(tmp_path / "val.txt", train[1::7])
    data, split = split_from_lists(tree, {"D_i": d_i, "val": val, "test": good_test}, 12, 1, "x", 2)
    pool = {data.train_paths[i] for i in split.pool}
    assert pool == {p for p, _ in scan.train} - {t.rsplit(" ", 1)[0] for t in train[1::7]}

    missing = _write(tmp_path / "missing.txt", train[:5] + ["train/n0/none.JPEG 0"])
    with pytest.raises(DataError, match="do not exist under .*first: train/n0/none.JPEG"):
        split_from_lists(tree, {**lists, "D_i": missing}, 12, 1, "x", 2)
    out_of_range = _write(tmp_path / "range.txt", [train[0].rsplit(" ", 1)[0] + " 12"])
    with pytest.raises(DataError, match="line 1: label 12 is out of range for 12 classes"):
        read_list(out_of_range, 12)
    bad = _write(tmp_path / "bad.txt", ["just-a-path"])
    with pytest.raises(DataError, match="expected 'relative/path label'"):
        read_list(bad, 12)
    no_class_0 = _write(tmp_path / "test0.txt", [t for t in test if not t.endswith(" 0")])
    with pytest.raises(DataError, match="label 0\\) has training images but no test images"):
        split_from_lists(tree, {**lists, "test": no_class_0}, 12, 1, "x", 2)
    relabelled = _write(tmp_path / "relabel.txt", [train[0].rsplit(" ", 1)[0] + " 3"])
    with pytest.raises(DataError, match="the lists disagree"):
        split_from_lists(tree, {**lists, "S_b": relabelled}, 12, 1, "x", 2)
    with pytest.raises(DataError, match="not found"):
        split_from_lists(tree, {**lists, "D_b": tmp_path / "nope.txt"}, 12, 1, "x", 2)


# --- decoding and views -----------------------------------------------------------------------


def test_decoding_in_workers_equals_decoding_in_process(tree, tmp_path):
    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:24]]
    assert any(p.endswith(".png") for p in paths)
    idx = [torch.arange(0, 10), torch.arange(10, 24)]
    inline = list(FileImages(tree, paths, torch.device("cpu"), workers=0).batches(idx))
    workers = list(FileImages(tree, paths, torch.device("cpu"), workers=2).batches(idx))
    assert [len(b) for b in workers] == [10, 14]
    for a, b in zip(inline, workers):
        for x, y in zip(a, b):
            assert x.dtype == torch.uint8 and x.shape[0] == 3 and torch.equal(x, y)
    sizes = {tuple(x.shape[1:]) for b in inline for x in b}
    assert len(sizes) > 5  # varied sizes
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes((tree / paths[0]).read_bytes()[:50])
    with pytest.raises(DataError, match="broken.JPEG is corrupt or truncated"):
        decode_file(broken)
    bank = FileImages(tmp_path, ["broken.JPEG", "broken.JPEG"], torch.device("cpu"), workers=2)
    with pytest.raises(DataError, match="broken.JPEG is corrupt"):
        list(bank.batches([torch.arange(2)]))


def test_read_ahead_batch_decoding_equals_the_worker_path(tree, tmp_path):
    """The CUDA path (reader thread + one batched decode_jpeg call on the device) run on the
    CPU: same pixels as the worker path (PNGs through the fallback decoder, a CMYK JPEG), the same
    errors, and a consumer that stops early does not strand the reader."""
    from PIL import Image

    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:20]]
    with Image.open(tree / paths[0]) as im:
        im.convert("CMYK").save(tmp_path / "cmyk.jpg")
    (tmp_path / "sub").symlink_to(tree, target_is_directory=True)
    names = ["cmyk.jpg"] + [f"sub/{p}" for p in paths]
    idx = [torch.arange(0, 7), torch.arange(7, 21)]
    bank = FileImages(tmp_path, names, torch.device("cpu"), workers=2)
    ahead = list(bank._read_ahead_batches([i.numpy() for i in idx]))
    workers = list(bank.batches(idx))
    assert [len(b) for b in ahead] == [7, 14]
    for a, b in zip(ahead, workers):
        for x, y in zip(a, b):
            assert x.dtype == torch.uint8 and torch.equal(x, y)
    many = [np.arange(i, i + 1) for i in range(21)]
    pending = bank._read_ahead_batches(many)
    assert len(next(pending)) == 1
    readers = [t for t in threading.enumerate() if t.name == "sdclr-read-ahead"]
    assert len(readers) == 1 and readers[0].is_alive()  # blocked on its full queue
    pending.close()  # the consumer stops after one batch
    readers[0].join(timeout=5)
    assert not readers[0].is_alive()
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes((tree / paths[0]).read_bytes()[:50])
    bad = FileImages(tmp_path, ["cmyk.jpg", "broken.JPEG"], torch.device("cpu"), workers=1)
    with pytest.raises(DataError, match="broken.JPEG is corrupt"):
        list(bad._read_ahead_batches([np.arange(2)]))
    missing = FileImages(tmp_path, ["cmyk.jpg", "gone.jpg"], torch.device("cpu"), workers=1)
    with pytest.raises(DataError, match="cannot read image .*gone.jpg"):
        list(missing._read_ahead_batches([np.arange(1), np.arange(2)]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nvjpeg_decoding_matches_the_cpu_decoder(tree):
    """Batches decoded on the GPU (nvJPEG; PNGs through the CPU decoder) have the CPU
    decoder's sizes and, up to the decoders' IDCT rounding, its pixels."""
    scan = scan_folder(tree, "train", "val")
    paths = [p for p, _ in scan.train[:24]]
    idx = [torch.arange(0, 10), torch.arange(10, 24)]
    gpu = list(FileImages(tree, paths, torch.device("cuda"), workers=2).batches(idx))
    cpu = list(FileImages(tree, paths, torch.device("cpu"), workers=0).batches(idx))
    for a, b in zip(gpu, cpu):
        for x, y in zip(a, b):
            assert x.device.type == "cuda" and x.dtype == torch.uint8 and x.shape == y.shape
            assert (x.cpu().float() - y.float()).abs().mean() < 2.0


def test_list_views_match_the_batched_views_on_equal_sizes():
    from sdclr.augment.ops import ContrastiveAugmentConfig
    from sdclr.augment.views import contrastive_view, eval_view, probe_train_view

    x = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    cfg = ContrastiveAugmentConfig(size=24, scale=(0.08, 1.0), blur_p=0.5)
    a = contrastive_view(x, cfg, torch.Generator().manual_seed(3))
    b = contrastive_view(list(x), cfg, torch.Generator().manual_seed(3))
    # same parameters from the same draws; the resize kernels differ only in float rounding
    assert a.shape == b.shape == (6, 3, 24, 24)
    assert (a - b).abs().max() < 2e-3
    p = probe_train_view(x, "resized", 24, torch.Generator().manual_seed(1))
    q = probe_train_view(list(x), "resized", 24, torch.Generator().manual_seed(1))
    assert (p - q).abs().max() < 2e-3
    e = eval_view(x, 32, 40)  # Resize(40) is the identity here: a central 32 px crop
    assert torch.allclose(e, x[:, :, 4:36, 4:36].float() / 255, atol=1e-5)
    assert torch.allclose(eval_view(list(x), 32, 40), e, atol=1e-6)


# --- end to end -------------------------------------------------------------------------------


def _run(args: list[str], env: dict, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sdclr", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_folder_and_list_file_runs_end_to_end(tree, tmp_path, env):
    # data=folder: lists generated from the tree, images decoded per batch by 2 workers
    job = tmp_path / "folder-job"
    r = _run(
        [
            "data=folder",
            f"data.root={tree}",
            "data.test_dir=val",
            "data.val_per_class=2",
            "data.fewshot_per_class=2",
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
    lists = tmp_path / "splits" / "folder" / "split1"
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
    pool = _write(tmp_path / "pool.txt", lines)
    test = _write(tmp_path / "test.txt", [f"{p} {y}" for p, y in scan.test])
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


def test_splits_command_writes_lists_for_a_folder(tree, tmp_path, capsys):
    from sdclr.cli.splits import main

    args = [
        f"data.root={tree}",
        "data.test_dir=val",
        "data.val_per_class=2",
        "data.fewshot_per_class=2",
    ]
    profile = ["data.profile=exp", "data.head_count=20", "data.tail_count=2"]
    rc = main(["--out", str(tmp_path), "--splits", "1,2", "data=folder", *args, *profile])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exp 20 -> 2" in out
    one = (tmp_path / "folder" / "split1" / "D_i.txt").read_text()
    two = (tmp_path / "folder" / "split2" / "D_i.txt").read_text()
    assert one != two  # each split draws its own class order
    rc = main(
        ["--out", str(tmp_path), "--splits", "1", "data=folder", *args, "data.head_count=400"]
    )
    assert rc == 0 and "exists" in capsys.readouterr().out  # never overwritten
