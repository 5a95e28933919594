"""Image-file datasets (sdclr.data.files): scanning a folder, generated list files and their
fingerprint, a profile drawn from a folder with a carved test set, unlabelled folders, and
list files and their errors, on a small ImageNet-style tree cut from the real Tiny ImageNet
copy (conftest's ``tree``)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from imagetree import TREE_COUNTS, write_list

from sdclr.data.files import load_file_dataset, read_list, scan_folder, split_from_lists
from sdclr.data.splits import long_tail_profile
from sdclr.errors import DataError


def _cfg(**data):
    from omegaconf import OmegaConf

    from sdclr.config.compose import compose_config

    cfg = compose_config(["data=folder"])
    for k, v in data.items():
        OmegaConf.update(cfg, f"data.{k}", v, merge=False)
    return cfg


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
    (out,) = (tmp_path / "folder").glob("*/split1")  # <split.dir>/<data.name>/<folder key>/
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == data.classes and meta["test"] == "val/ folder"
    d_i = np.bincount(data.train_y[split.D_i], minlength=12)
    assert d_i.tolist() == [c - 2 for c in TREE_COUNTS]  # profile none: the folder as it is
    assert len(data.test_paths) == 6 * 12
    again, split2 = load_file_dataset(cfg.data, cfg.split, tmp_path)  # read back, not redrawn
    assert again.train_paths == data.train_paths and np.array_equal(split2.D_i, split.D_i)
    (out / "D_i.txt").write_text((out / "D_i.txt").read_text().replace(" 0\n", " 1\n", 1))
    with pytest.raises(DataError, match="fingerprint"):
        load_file_dataset(cfg.data, cfg.split, tmp_path)


def test_two_folders_never_share_their_generated_lists(tree, tmp_path):
    """The lists are kept under a key of the scanned folder: a second folder under the same
    data.name and split.dir (here the tree less three images of its first class) gets lists of
    its own, not the first folder's; an identical copy reads the same lists."""
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    first = sorted((other / "train").iterdir())[0]
    for f in sorted(first.iterdir())[:3]:
        f.unlink()
    splits = tmp_path / "splits"
    common = dict(test_dir="val", val_per_class=2, fewshot_per_class=2)
    a, _ = load_file_dataset(_cfg(root=str(tree), **common).data, _cfg().split, splits)
    b, split_b = load_file_dataset(_cfg(root=str(other), **common).data, _cfg().split, splits)
    assert len(list((splits / "folder").glob("*/split1"))) == 2
    assert len(b.train_paths) == len(a.train_paths) - 3
    assert np.bincount(b.train_y[split_b.D_i], minlength=12)[0] == TREE_COUNTS[0] - 3 - 2
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    c, _ = load_file_dataset(_cfg(root=str(copy), **common).data, _cfg().split, splits)
    assert c.train_paths == a.train_paths
    assert len(list((splits / "folder").glob("*/split1"))) == 2


def test_other_profile_settings_get_their_own_generated_lists(tree, tmp_path):
    """The lists' key was the folder's alone: a run with another profile read the lists drawn
    for the first one. Now the settings that draw them are part of the key."""
    root = tmp_path / "classes"
    shutil.copytree(tree / "train", root)
    splits = tmp_path / "splits"
    common = dict(root=str(root), profile="exp", head_count=20, val_per_class=1, test_per_class=2)
    fewshot = dict(fewshot_per_class=1)
    steep, steep_split = load_file_dataset(
        _cfg(**common, **fewshot, tail_count=2).data, _cfg().split, splits
    )
    mild, mild_split = load_file_dataset(
        _cfg(**common, **fewshot, tail_count=3).data, _cfg().split, splits
    )
    for data, split, tail in ((steep, steep_split, 2), (mild, mild_split, 3)):
        counts = sorted(np.bincount(data.train_y[split.D_i], minlength=12).tolist(), reverse=True)
        assert counts == long_tail_profile("exp", 12, 20, tail=tail)
    assert len(list((splits / "folder").glob("*/split1"))) == 2
    again, again_split = load_file_dataset(
        _cfg(**common, **fewshot, tail_count=2).data, _cfg().split, splits
    )
    assert np.array_equal(again_split.D_i, steep_split.D_i)
    assert len(list((splits / "folder").glob("*/split1"))) == 2


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


def test_list_errors_name_the_problem(tree, tmp_path):
    scan = scan_folder(tree, "train", "val")
    train = [f"{p} {y}" for p, y in scan.train]
    test = [f"{p} {y}" for p, y in scan.test]
    pool = write_list(tmp_path / "pool.txt", train)
    good_test = write_list(tmp_path / "test.txt", test)
    lists = {"pool": pool, "D_i": pool, "val": pool, "test": good_test}
    data, split = split_from_lists(tree, lists, 12, 1, "x", 2)
    assert data.classes == scan.classes and len(split.D_i) == len(train)
    # no pool list: every image of the D_i classes' folders except the validation images
    d_i = write_list(tmp_path / "d_i.txt", train[::3])
    val = write_list(tmp_path / "val.txt", train[1::7])
    data, split = split_from_lists(tree, {"D_i": d_i, "val": val, "test": good_test}, 12, 1, "x", 2)
    pool = {data.train_paths[i] for i in split.pool}
    assert pool == {p for p, _ in scan.train} - {t.rsplit(" ", 1)[0] for t in train[1::7]}

    missing = write_list(tmp_path / "missing.txt", train[:5] + ["train/n0/none.JPEG 0"])
    with pytest.raises(DataError, match="do not exist under .*first: train/n0/none.JPEG"):
        split_from_lists(tree, {**lists, "D_i": missing}, 12, 1, "x", 2)
    out_of_range = write_list(tmp_path / "range.txt", [train[0].rsplit(" ", 1)[0] + " 12"])
    with pytest.raises(DataError, match="line 1: label 12 is out of range for 12 classes"):
        read_list(out_of_range, 12)
    bad = write_list(tmp_path / "bad.txt", ["just-a-path"])
    with pytest.raises(DataError, match="expected 'relative/path label'"):
        read_list(bad, 12)
    no_class_0 = write_list(tmp_path / "test0.txt", [t for t in test if not t.endswith(" 0")])
    with pytest.raises(DataError, match="label 0\\) has training images but no test images"):
        split_from_lists(tree, {**lists, "test": no_class_0}, 12, 1, "x", 2)
    relabelled = write_list(tmp_path / "relabel.txt", [train[0].rsplit(" ", 1)[0] + " 3"])
    with pytest.raises(DataError, match="the lists disagree"):
        split_from_lists(tree, {**lists, "S_b": relabelled}, 12, 1, "x", 2)
    with pytest.raises(DataError, match="not found"):
        split_from_lists(tree, {**lists, "D_b": tmp_path / "nope.txt"}, 12, 1, "x", 2)


# --- ImageNet-100-LT: the reference's lists (the default), or generated lists -----------------


def _empty_imagenet_root(root, lists_dir):
    """An ILSVRC-style root holding an empty file for every image the reference's lists name
    (no ImageNet here): enough for the catalogue, the pool of the D_i folders and the checks
    that every listed image exists."""
    for f in lists_dir.glob("*.txt"):
        for line in f.read_text().splitlines():
            path = root / line.rsplit(" ", 1)[0]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def test_imagenet100_lt_defaults_to_the_reference_lists(tmp_path):
    from sdclr.config.compose import compose_config
    from sdclr.config.validate import validate
    from sdclr.data.files import OFFICIAL_LISTS
    from sdclr.data.splits import paper_split_note, verify_checksums
    from sdclr.eval.metrics import class_groups
    from sdclr.utils.io import OFFICIAL_SPLITS_DIR

    lists_dir = OFFICIAL_SPLITS_DIR / "imagenet100"
    assert "SHA-256 checked" in verify_checksums([lists_dir / f for f in OFFICIAL_LISTS.values()])
    root = tmp_path / "imagenet"
    _empty_imagenet_root(root, lists_dir)
    cfg = compose_config(["data=imagenet100_lt", f"data.root={root}"])
    validate(cfg)
    assert cfg.split.source == "official"
    data, split = load_file_dataset(cfg.data, cfg.split, tmp_path / "splits")
    assert split.source.startswith("official lists") and "SHA-256 checked" in split.source
    assert split.kind == "official"
    assert paper_split_note(cfg.data.name, split.source) is None
    assert not (tmp_path / "splits").exists()  # nothing generated

    def listed(name):
        return {ln.rsplit(" ", 1)[0] for ln in (lists_dir / name).read_text().splitlines()}

    y = data.train_y
    for key, name in OFFICIAL_LISTS.items():
        if key != "test":
            assert {data.train_paths[i] for i in split.subset(key)} == listed(name), key
    assert set(data.test_paths) == listed(OFFICIAL_LISTS["test"])
    d_i = np.bincount(y[split.D_i], minlength=100)
    assert len(split.D_i) == 12205 and d_i.max() == 1280 and d_i.min() == 6
    groups = class_groups(d_i, cfg.data.group_scheme)
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [39, 48, 13]
    assert np.bincount(y[split.D_b], minlength=100).tolist() == [122] * 100
    # the few-shot set is the separate 1 % list: 12 per class, mostly outside D_i
    assert np.bincount(y[split.S_b], minlength=100).tolist() == [12] * 100
    assert len(np.intersect1d(split.S_b, split.D_i)) == 111
    assert np.bincount(y[split.val], minlength=100).tolist() == [20] * 100
    assert np.bincount(data.test_y, minlength=100).tolist() == [50] * 100
    # the probe pool: every image of the class folders except the validation list
    pool = {data.train_paths[i] for i in split.pool}
    in_folders = {str(p.relative_to(root)) for p in (root / "train").rglob("*.JPEG")}
    assert pool == in_folders - listed(OFFICIAL_LISTS["val"])
    assert set(split.S_b) <= set(split.pool) and set(split.D_i) <= set(split.pool)


def test_imagenet100_lt_official_refuses_other_splits_and_missing_images(tmp_path):
    from sdclr.config.compose import compose_config
    from sdclr.config.validate import validate
    from sdclr.errors import ConfigError

    with pytest.raises(ConfigError, match="split.index"):
        validate(compose_config(["data=imagenet100_lt", "split=split2"]))
    cfg = compose_config(["data=imagenet100_lt", f"data.root={tmp_path}"])
    with pytest.raises(DataError, match="ILSVRC-2012 images.*split.source=generated"):
        load_file_dataset(cfg.data, cfg.split, tmp_path / "splits")


def test_generated_imagenet_style_lists_draw_s_b_apart_and_say_so(tree, tmp_path):
    from sdclr.config.compose import compose_config
    from sdclr.data.splits import paper_split_note

    cfg = compose_config(
        [
            "data=imagenet100_lt",
            "split.source=generated",
            f"data.root={tree}",
            "data.num_classes=12",
            "data.val_per_class=2",
            "data.fewshot_per_class=4",
            "data.head_count=40",
            "data.tail_count=2",
        ]
    )
    data, split = load_file_dataset(cfg.data, cfg.split, tmp_path)
    assert split.source.startswith("generated lists") and split.kind == "generated"
    (out,) = (tmp_path / "imagenet100_lt").glob("*/split1")
    meta = json.loads((out / "meta.json").read_text())
    assert "drawn apart from D_i" in meta["fewshot"]
    y = data.train_y
    assert np.bincount(y[split.S_b], minlength=12).tolist() == [4] * 12
    assert len(np.intersect1d(split.S_b, split.D_i)) < len(split.S_b)
    note = paper_split_note(cfg.data.name, split.source)
    assert note and "not the paper's" in note
