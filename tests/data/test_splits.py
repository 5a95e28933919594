"""The split generator, split files and the reference index files, on the real labels; the
long-tail profiles and an ImageNet-style generated split."""

from __future__ import annotations

import numpy as np
import pytest

from sdclr.data.arrays import labels_fingerprint
from sdclr.data.splits import (
    SPLITS_DIR,
    apply_fraction,
    generate_split,
    load_official_split,
    load_split_file,
    long_tail_profile,
    pareto_counts,
    profile_counts,
    resolve_split,
    save_split,
    stratified_fraction,
)
from sdclr.errors import DataError

CIFAR10_PROFILE = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]


def cifar10_split(labels, i):
    return generate_split(labels, 10, i, 500, 100, 45, "cifar10_lt")


def test_profiles_match_the_protocol():
    assert profile_counts(4500, 10, 100) == CIFAR10_PROFILE
    c100 = profile_counts(450, 100, 100)
    assert c100[0] == 450 and c100[-1] == 4 and sum(c100) == 9754


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_generated_cifar10_split_follows_the_protocol(cifar10_labels, index):
    y = cifar10_labels
    s = cifar10_split(y, index)
    assert len(s.pool) == 45000 and len(s.val) == 5000
    assert np.all(np.bincount(y[s.pool]) == 4500) and np.all(np.bincount(y[s.val]) == 500)
    assert not set(s.pool) & set(s.val)
    d_i = np.bincount(y[s.D_i], minlength=10)
    assert sorted(d_i.tolist(), reverse=True) == CIFAR10_PROFILE and len(s.D_i) == 11165
    assert np.all(np.bincount(y[s.D_b]) == 1116) and len(s.D_b) == 11160
    assert np.all(np.bincount(y[s.S_b]) == 45) and len(s.S_b) == 450
    pool = set(s.pool)
    assert set(s.D_i) <= pool and set(s.D_b) <= pool
    assert set(s.S_b) <= set(s.D_i) and set(s.S_b) <= set(s.D_b)
    for arr in (s.D_i, s.D_b, s.S_b):
        assert len(np.unique(arr)) == len(arr)


def test_splits_differ_in_class_order_and_share_the_pool(cifar10_labels):
    y = cifar10_labels
    splits = [cifar10_split(y, i) for i in range(1, 6)]
    orders = {tuple(np.argsort(-np.bincount(y[s.D_i]), kind="stable")) for s in splits}
    assert len(orders) == 5
    assert all(np.array_equal(splits[0].pool, s.pool) for s in splits)
    # deterministic
    again = cifar10_split(y, 3)
    assert np.array_equal(again.D_i, splits[2].D_i) and np.array_equal(again.S_b, splits[2].S_b)


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_committed_split_files_are_what_the_generator_makes(cifar10_labels, index):
    path = SPLITS_DIR / "cifar10" / f"split{index}.npz"
    loaded = load_split_file(path, cifar10_labels)
    fresh = cifar10_split(cifar10_labels, index)
    for name in ("pool", "val", "D_i", "D_b", "S_b"):
        assert np.array_equal(loaded.subset(name), fresh.subset(name)), name


def test_split_dir_is_where_generated_cifar_splits_live(cifar10_labels, tmp_path):
    """split.dir reached only the image-file route; CIFAR read and wrote the repository's
    splits/ whatever it said. Now a split missing there is generated into split.dir, and
    the checkout is not touched."""
    from sdclr.config.compose import compose_config

    repo_files = {f: f.stat().st_mtime_ns for f in SPLITS_DIR.rglob("*") if f.is_file()}
    cfg = compose_config(["split=split2", f"split.dir={tmp_path / 'mine'}"])
    split = resolve_split(cfg.split, cfg.data, cifar10_labels)
    written = tmp_path / "mine" / "cifar10" / "split2.npz"
    assert written.is_file()
    committed = load_split_file(SPLITS_DIR / "cifar10" / "split2.npz", cifar10_labels)
    for name in ("pool", "val", "D_i", "D_b", "S_b"):
        assert np.array_equal(split.subset(name), committed.subset(name)), name
    after = {f: f.stat().st_mtime_ns for f in SPLITS_DIR.rglob("*") if f.is_file()}
    assert after == repo_files
    # the file in split.dir is what a later run reads: a changed copy there is used
    again = resolve_split(cfg.split, cfg.data, cifar10_labels)
    assert np.array_equal(again.D_i, split.D_i)
    written.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="split2.npz"):
        resolve_split(cfg.split, cfg.data, cifar10_labels)


def test_split_file_refuses_another_copy_of_the_data(cifar10_labels, tmp_path):
    s = cifar10_split(cifar10_labels, 1)
    path = tmp_path / "split1.npz"
    save_split(s, path)
    shuffled = np.random.default_rng(0).permutation(cifar10_labels)
    with pytest.raises(DataError, match="fingerprint"):
        load_split_file(path, shuffled)
    with pytest.raises(DataError, match="45000 images|another copy"):
        load_split_file(path, cifar10_labels[:45000])
    assert load_split_file(path, cifar10_labels).fingerprint == labels_fingerprint(cifar10_labels)


def test_reference_index_files_load_in_original_order(data_root, cifar10_labels):
    s = load_official_split(
        data_root / "sdclr-splits" / "cifar10", 1, cifar10_labels, 10, CIFAR10_PROFILE
    )
    order = np.argsort(-np.bincount(cifar10_labels[s.D_i]), kind="stable")
    assert order.tolist() == [6, 8, 4, 1, 7, 0, 3, 2, 5, 9]  # data README: split 1's order
    assert len(s.pool) == 45000 and len(s.S_b) == 450
    # the same files against class-major (image-folder) order are refused
    class_major = np.sort(cifar10_labels)
    with pytest.raises(DataError, match="original order"):
        load_official_split(
            data_root / "sdclr-splits" / "cifar10", 1, class_major, 10, CIFAR10_PROFILE
        )


def test_split_asking_for_more_than_the_data_has_is_refused():
    labels = np.repeat(np.arange(10), 30)
    with pytest.raises(DataError, match="few-shot"):
        generate_split(labels, 10, 1, 5, 100, 45)
    with pytest.raises(DataError, match="validation"):
        generate_split(labels, 10, 1, 30, 100, 1)


def test_cifar100_profile_on_synthetic_labels():
    labels = np.repeat(np.arange(100), 500)
    s = generate_split(labels, 100, 2, 50, 100, 4)
    counts = np.bincount(labels[s.D_i], minlength=100)
    assert sorted(counts.tolist(), reverse=True) == profile_counts(450, 100, 100)
    assert len(s.D_i) == 9754 and np.all(np.bincount(labels[s.D_b]) == 97)
    assert np.all(np.bincount(labels[s.S_b]) == 4) and set(s.S_b) <= set(s.D_i)


def test_fraction_is_stratified_and_deterministic(cifar10_labels):
    y = cifar10_labels
    s = cifar10_split(y, 1)
    small = apply_fraction(s, y, 0.1)
    d_i = np.bincount(y[small.D_i], minlength=10)
    full = np.bincount(y[s.D_i], minlength=10)
    assert np.all(d_i == np.maximum(1, np.round(0.1 * full)))
    assert set(small.D_i) <= set(s.D_i) and len(small.pool) == 4500
    assert np.array_equal(apply_fraction(s, y, 0.1).D_i, small.D_i)
    tiny = stratified_fraction(s.D_i, y, 0.05)
    assert set(tiny) <= set(small.D_i)  # smaller fractions nest in larger ones
    assert np.all(np.bincount(y[tiny], minlength=10) >= 1)


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
