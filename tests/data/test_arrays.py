"""Dataset loading: both layouts, the decode cache, original order, and clear errors."""

from __future__ import annotations

import tarfile

import numpy as np
import pytest
from PIL import Image

from sdclr.data.arrays import find_source, load_image_data
from sdclr.errors import DataError


def make_folder(root, classes=("cat", "dog", "emu"), n_train=4, n_test=2, size=32):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    return root


def load(root, cache=None, **kw):
    return load_image_data(
        str(root),
        "toy",
        image_size=kw.pop("image_size", 32),
        cache_dir=str(cache) if cache else None,
        progress=False,
        **kw,
    )


def test_real_cifar10_copy_in_original_order(cifar10, cifar10_labels):
    assert cifar10.train_x.shape == (50000, 3, 32, 32) and cifar10.train_x.dtype == np.uint8
    assert cifar10.test_x.shape == (10000, 3, 32, 32)
    assert np.array_equal(cifar10.train_y, cifar10_labels)
    assert cifar10.classes[0] == "airplane" and cifar10.classes[-1] == "truck"
    assert np.all(np.bincount(cifar10.test_y) == 1000)


def test_image_folder_directory_and_tar_give_the_same_arrays(tmp_path):
    root = make_folder(tmp_path / "toy")
    a = load(root)
    tar_path = tmp_path / "toy.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    b = load(tar_path)
    assert a.classes == ["cat", "dog", "emu"] and a.train_x.shape == (12, 3, 32, 32)
    assert np.array_equal(a.train_x, b.train_x) and np.array_equal(a.test_y, b.test_y)
    png = np.asarray(Image.open(root / "train" / "dog" / "1.png"))
    assert np.array_equal(a.train_x[5].transpose(1, 2, 0), png)  # class-major, natural order


def test_decode_cache_is_reused_and_keyed_on_the_source(tmp_path):
    root = make_folder(tmp_path / "toy")
    cache = tmp_path / "cache"
    first = load(root, cache)
    assert len(list(cache.glob("toy-*.npz"))) == 1
    second = load(root, cache)
    assert "cached" in second.source and np.array_equal(first.train_x, second.train_x)


def test_order_labels_put_a_folder_in_the_original_order(tmp_path):
    root = make_folder(tmp_path / "toy")
    order = np.array([2, 0, 1, 0, 2, 1, 0, 1, 2, 0, 1, 2])
    np.save(root / "labels.npy", order)
    data = load(root, order_labels="labels.npy")
    plain = load(root)
    assert np.array_equal(data.train_y, order)
    # the first image of the original order is the first "emu" image
    assert np.array_equal(data.train_x[0], plain.train_x[8])
    np.save(root / "bad.npy", order[:-1])
    with pytest.raises(DataError, match="does not fit"):
        load(root, order_labels="bad.npy")


def test_missing_and_empty_roots_explain_the_layouts(tmp_path):
    with pytest.raises(DataError, match="does not exist.*SDCLR_DATA"):
        find_source(tmp_path / "nope", "cifar10_lt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        find_source(tmp_path / "empty", "cifar10_lt")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="supported layout"):
        find_source(tmp_path / "other", "cifar10_lt", archive="cifar10-jpg.tar.gz")


def test_corrupt_image_is_named(tmp_path):
    root = make_folder(tmp_path / "toy")
    bad = root / "train" / "dog" / "2.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    with pytest.raises(DataError, match=r"train/dog/2\.png"):
        load(root)


def test_truncated_archive_is_reported(tmp_path):
    root = make_folder(tmp_path / "toy")
    tar_path = tmp_path / "toy.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(root / "train", arcname="train")
        tar.add(root / "test", arcname="test")
    data = tar_path.read_bytes()
    tar_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="corrupt or truncated"):
        load(tar_path)


def test_train_and_test_class_sets_must_match(tmp_path):
    root = make_folder(tmp_path / "toy")
    (root / "test" / "emu").rename(root / "test" / "yak")
    with pytest.raises(DataError, match="different class sets"):
        load(root)


def test_wrong_image_size_is_refused(tmp_path):
    root = make_folder(tmp_path / "toy", size=40)
    with pytest.raises(DataError, match="40x40"):
        load(root)


def test_torchvision_layout_reads_like_the_jpeg_copy(cifar10, tmp_path):
    """Write the decoded copy as torchvision's CIFAR-10 pickles and read it back: same
    images, same order, so split files and the reference index files apply to both."""
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(5):
        sl = slice(10000 * i, 10000 * (i + 1))
        batch = {
            "data": cifar10.train_x[sl].reshape(10000, -1),
            "labels": cifar10.train_y[sl].tolist(),
        }
        (folder / f"data_batch_{i + 1}").write_bytes(pickle.dumps(batch))
    (folder / "test_batch").write_bytes(
        pickle.dumps({"data": cifar10.test_x.reshape(10000, -1), "labels": cifar10.test_y.tolist()})
    )
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": cifar10.classes}))
    data = load_image_data(str(tmp_path), "cifar10_lt", image_size=32, progress=False)
    assert "torchvision" in data.source
    assert data.fingerprint == cifar10.fingerprint
    assert np.array_equal(data.train_x, cifar10.train_x)
    assert data.classes == cifar10.classes
    (folder / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_3"):
        load_image_data(str(tmp_path), "cifar10_lt", image_size=32, progress=False)
