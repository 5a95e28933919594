"""The reference index files (the default split) and their checksums, the split generator and
split files, on the real labels; the long-tail profiles and an ImageNet-style generated split."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from sdclr.config.compose import compose_config
from sdclr.data.arrays import labels_fingerprint
from sdclr.data.splits import (
    SPLITS_DIR,
    apply_fraction,
    generate_split,
    load_official_split,
    load_split_file,
    long_tail_profile,
    official_dir,
    paper_split_note,
    pareto_counts,
    profile_counts,
    resolve_split,
    save_split,
    stratified_fraction,
)
from sdclr.errors import DataError
from sdclr.eval.metrics import class_groups
from sdclr.utils.io import OFFICIAL_SPLITS_DIR

CIFAR10_PROFILE = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]


def cifar10_split(labels, i):
    return generate_split(labels, 10, i, 500, 100, 45, "cifar10_lt")


def shipped_checksums() -> dict[str, str]:
    """splits/official/SHA256SUMS as {path relative to splits/official: digest}."""
    table = {}
    for line in (OFFICIAL_SPLITS_DIR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        table[name.removeprefix("./")] = digest
    return table


# --- the default split: the reference's files ----------------------------------------------


def test_shipped_official_files_are_the_checksummed_reference_files():
    table = shipped_checksums()
    shipped = {
        str(f.relative_to(OFFICIAL_SPLITS_DIR))
        for f in OFFICIAL_SPLITS_DIR.rglob("*")
        if f.is_file() and f.name != "SHA256SUMS"
    }
    assert shipped == set(table) and len(table) == 17 + 17 + 5
    for name, digest in table.items():
        assert hashlib.sha256((OFFICIAL_SPLITS_DIR / name).read_bytes()).hexdigest() == digest
    # splits/README.md names the source and repeats the checksums
    readme = (SPLITS_DIR / "README.md").read_text()
    assert "VITA-Group/SDCLR" in readme and "f1490fc" in readme
    assert all(f"{digest}  ./{name}" in readme for name, digest in table.items())


def test_shipped_files_are_the_shared_reference_copy(data_root):
    shared = data_root / "sdclr-splits" / "SHA256SUMS"
    assert (OFFICIAL_SPLITS_DIR / "SHA256SUMS").read_text().split() == shared.read_text().split()


@pytest.mark.parametrize("data,folder", [("cifar10_lt", "cifar10"), ("cifar100_lt", "cifar100")])
def test_the_published_datasets_default_to_the_shipped_reference_files(data, folder):
    cfg = compose_config([f"data={data}"])
    assert cfg.split.source == "official" and cfg.split.official_dir is None
    assert official_dir(cfg.split, cfg.data.name) == OFFICIAL_SPLITS_DIR / folder
    for other in ("folder", "imagenet_lt_exp"):
        assert compose_config([f"data={other}"]).split.source == "generated"


@pytest.mark.parametrize("index", [1, 2, 3, 4, 5])
def test_default_cifar10_split_selects_exactly_the_reference_indices(
    data_root, cifar10_labels, index
):
    y = cifar10_labels
    cfg = compose_config([f"split=split{index}"])
    s = resolve_split(cfg.split, cfg.data, y)
    assert s.kind == "official" and "SHA-256 checked" in s.source
    assert apply_fraction(s, y, 0.02).kind == "official"  # what the run record says
    ref = data_root / "sdclr-splits" / "cifar10"
    files = {
        "pool": "trainIdxList",
        "val": "valIdxList",
        **{k: f"split{index}_{k}" for k in ("D_i", "D_b", "S_b")},
    }
    for key, name in files.items():
        assert np.array_equal(s.subset(key), np.sort(np.load(ref / f"{name}.npy"))), key
    counts = np.bincount(y[s.D_i], minlength=10)
    assert sorted(counts.tolist(), reverse=True) == CIFAR10_PROFILE
    if index == 1:  # the data README: split 1's order, largest to smallest
        order = np.argsort(-counts, kind="stable")
        assert order.tolist() == [6, 8, 4, 1, 7, 0, 3, 2, 5, 9]
        groups = class_groups(counts, cfg.data.group_scheme)
        assert groups == {"many": [1, 4, 6, 8], "medium": [0, 3, 7], "few": [2, 5, 9]}
    assert paper_split_note(cfg.data.name, s.source) is None


def test_default_cifar100_split_reads_the_reference_files_under_their_names():
    """No CIFAR-100 pixels here: the index files themselves, read through the default config
    with labels made to fit D_i's profile (the loader's check)."""
    cfg = compose_config(["data=cifar100_lt"])
    folder = OFFICIAL_SPLITS_DIR / "cifar100"

    def load(name: str) -> np.ndarray:
        return np.load(folder / f"cifar100_{name}.npy")

    pool, val = load("trainIdxList"), load("valIdxList")
    assert len(pool) == 40000 and len(val) == 5000 and not set(pool) & set(val)
    profile = profile_counts(450, 100, 100)
    for index in range(1, 6):
        d_i, d_b, s_b = (load(f"split{index}_{k}") for k in ("D_i", "D_b", "S_b"))
        assert (len(d_i), len(d_b), len(s_b)) == (9754, 9700, 400)
        assert len(np.unique(d_i)) == 9754 and not set(d_i) & set(val)
        assert set(s_b) <= set(d_i) and set(s_b) <= set(d_b)
    # labels that give split 1's D_i the profile: its first 450 images class 0, and so on
    d_i = load("split1_D_i")
    labels = np.arange(50000) % 100
    labels[d_i] = np.repeat(np.arange(100), profile)
    s = resolve_split(cfg.split, cfg.data, labels)
    assert s.source.startswith("official") and "SHA-256 checked" in s.source
    assert np.array_equal(s.pool, np.sort(pool)) and np.array_equal(s.val, np.sort(val))
    assert np.array_equal(s.D_i, np.sort(d_i)) and len(s.S_b) == 400
    counts = np.bincount(labels[s.D_i], minlength=100)
    groups = class_groups(counts, cfg.data.group_scheme)
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [34, 33, 33]
    with pytest.raises(DataError, match="original order"):  # the profile is checked
        resolve_split(cfg.split, cfg.data, np.arange(50000) % 100)


def test_a_changed_reference_file_is_refused_by_its_checksum(cifar10_labels, tmp_path):
    copy = tmp_path / "official"
    shutil.copytree(OFFICIAL_SPLITS_DIR / "cifar10", copy / "cifar10")
    shutil.copy(OFFICIAL_SPLITS_DIR / "SHA256SUMS", copy / "SHA256SUMS")
    cfg = compose_config([f"split.official_dir={copy / 'cifar10'}"])
    assert "SHA-256 checked" in resolve_split(cfg.split, cfg.data, cifar10_labels).source
    victim = copy / "cifar10" / "split1_S_b.npy"
    arr = np.load(victim)
    arr[0] = arr[1]
    np.save(victim, arr)
    with pytest.raises(DataError, match="split1_S_b.npy has SHA-256"):
        resolve_split(cfg.split, cfg.data, cifar10_labels)
    # a user's own copy without SHA256SUMS is read, and says it was not checked
    (copy / "SHA256SUMS").unlink()
    shutil.copy(OFFICIAL_SPLITS_DIR / "cifar10" / "split1_S_b.npy", victim)
    assert "not checked" in resolve_split(cfg.split, cfg.data, cifar10_labels).source


def test_a_generated_split_says_its_groups_are_not_the_papers(cifar10_labels, tmp_path):
    cfg = compose_config(["split.source=generated", f"split.dir={tmp_path}"])
    s = resolve_split(cfg.split, cfg.data, cifar10_labels)
    assert s.kind == "generated"
    note = paper_split_note(cfg.data.name, s.source)
    assert note and "not the paper's" in note and "split.source=official" in note
    assert paper_split_note("folder", s.source) is None  # no published split to differ from


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
    repo_files = {f: f.stat().st_mtime_ns for f in SPLITS_DIR.rglob("*") if f.is_file()}
    cfg = compose_config(
        ["split=split2", "split.source=generated", f"split.dir={tmp_path / 'mine'}"]
    )
    split = resolve_split(cfg.split, cfg.data, cifar10_labels)
    written = tmp_path / "mine" / "cifar10" / "split2_if100_val500_fs45.npz"
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
    with pytest.raises(DataError, match="split2_if100_val500_fs45.npz"):
        resolve_split(cfg.split, cfg.data, cifar10_labels)


def test_without_split_dir_generated_splits_are_read_and_written_in_the_cache(
    cifar10_labels, tmp_path
):
    """split.dir null: <data.cache_dir>/splits first, then the split files sdclr ships; a split
    neither has is generated into the cache, never into the package (or the checkout)."""
    shipped = {f: f.stat().st_mtime_ns for f in SPLITS_DIR.rglob("*") if f.is_file()}
    cfg = compose_config(["split=split2", "split.source=generated", f"data.cache_dir={tmp_path}"])
    s = resolve_split(cfg.split, cfg.data, cifar10_labels)
    assert s.source == f"file {SPLITS_DIR / 'cifar10' / 'split2.npz'}"
    assert not (tmp_path / "splits").exists()
    # python -m sdclr.splits writes here
    mine = tmp_path / "splits" / "cifar10" / "split2_if100_val500_fs45.npz"
    save_split(cifar10_split(cifar10_labels, 2), mine)
    assert resolve_split(cfg.split, cfg.data, cifar10_labels).source == f"file {mine}"
    cfg = compose_config(
        ["data=cifar100_lt", "split.source=generated", f"data.cache_dir={tmp_path}"]
    )
    s = resolve_split(cfg.split, cfg.data, np.arange(50000) % 100)
    assert (
        s.kind == "generated"
        and (tmp_path / "splits" / "cifar100" / "split1_if100_val50_fs4.npz").is_file()
    )
    assert {f: f.stat().st_mtime_ns for f in SPLITS_DIR.rglob("*") if f.is_file()} == shipped


def test_another_imbalance_factor_gets_its_own_generated_split(cifar10_labels, tmp_path):
    """The generated file was named by dataset and index alone: data.imbalance_factor=50 read
    the shipped imbalance-100 split2.npz. Now each recipe has its file, the shipped one is read
    only for its own recipe, and a file whose counts are not its name's stops the run."""
    over = ["split=split2", "split.source=generated", f"data.cache_dir={tmp_path}"]
    cfg = compose_config([*over, "data.imbalance_factor=50"])
    s = resolve_split(cfg.split, cfg.data, cifar10_labels)
    held = sorted(s.counts("D_i", cifar10_labels).tolist(), reverse=True)
    assert held == profile_counts(4500, 10, 50) and held[-1] == 90
    mine = tmp_path / "splits" / "cifar10" / "split2_if50_val500_fs45.npz"
    assert s.kind == "generated" and mine.is_file()
    assert resolve_split(cfg.split, cfg.data, cifar10_labels).source == f"file {mine}"
    default = compose_config(over)
    assert resolve_split(default.split, default.data, cifar10_labels).source == (
        f"file {SPLITS_DIR / 'cifar10' / 'split2.npz'}"
    )
    shots = compose_config([*over, "data.fewshot_per_class=10"])
    assert (
        resolve_split(shots.split, shots.data, cifar10_labels).counts("S_b", cifar10_labels) == 10
    ).all()
    shutil.copy(SPLITS_DIR / "cifar10" / "split2.npz", mine)  # a factor-100 file, renamed
    with pytest.raises(DataError, match=r"split2_if50_val500_fs45\.npz holds a D_i of 4500 -> 45"):
        resolve_split(cfg.split, cfg.data, cifar10_labels)


def test_official_splits_with_another_imbalance_factor_say_to_generate(cifar10_labels):
    """The reference's files hold imbalance 100; the profile check blamed the data's order."""
    cfg = compose_config(["data.imbalance_factor=50"])
    with pytest.raises(DataError, match="imbalance 100.*add split.source=generated") as e:
        resolve_split(cfg.split, cfg.data, cifar10_labels)
    assert "order" not in str(e.value)


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
    # S_b is drawn apart from D_i (the reference's 1 % list: 12 per class, mostly outside D_i):
    # another profile gives another D_i and the same S_b, and S_b is not D_i's prefix
    flatter = long_tail_profile("exp", 20, 100, tail=20)
    other = generate_split(
        labels, 20, 1, 10, 50, 12, "x", profile=flatter, test_per_class=8, fewshot_in_d_i=False
    )
    assert not np.array_equal(other.D_i, s.D_i) and np.array_equal(other.S_b, s.S_b)
    assert len(np.intersect1d(s.S_b, s.D_i)) < len(s.S_b)


def test_profile_needing_more_images_than_any_class_is_refused():
    labels = np.repeat(np.arange(4), 50)
    with pytest.raises(DataError, match="lower data.head_count"):
        generate_split(labels, 4, 1, 5, 10, 2, profile=[100, 40, 20, 10], fewshot_in_d_i=False)
