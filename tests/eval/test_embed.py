"""The 2-D map of the test features (sdclr/eval/embed.py): the class-stratified subsample,
the t-SNE / PCA coordinates, the measures of the map, and the features it is drawn from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny import GROUPS3, images, tiny_cfg, tiny_model

from sdclr.data.banks import TensorImages
from sdclr.eval.embed import embed_2d, features_of, map_measures, stratified_subsample
from sdclr.eval.features import EvalSettings, extract_bank_features


def long_tailed_labels(seed: int = 0) -> np.ndarray:
    counts = [400, 200, 100, 50, 20, 9, 5, 3, 2, 1]  # 790 images, a one-image class
    labels = np.repeat(np.arange(10), counts)
    return np.random.default_rng(seed).permutation(labels)


def clusters(n_per: int = 40, dim: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well separated clusters of ``n_per`` points each, and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 4
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + rng.normal(size=(len(labels), dim)) * 0.3, labels


# --- the subsample ------------------------------------------------------------------------


def test_subsample_keeps_every_class_in_proportion_and_the_exact_size():
    labels = long_tailed_labels()
    idx = stratified_subsample(labels, 100, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    assert np.all(np.diff(idx) > 0)  # sorted positions
    counts = np.bincount(labels[idx], minlength=10)
    assert np.all(counts >= 1)  # the one-image class too
    share = 100 * np.bincount(labels, minlength=10) / len(labels)
    assert np.all(np.abs(counts - share) <= 1.5), (counts, share)


def test_subsample_is_seeded():
    labels = long_tailed_labels()
    a, b = stratified_subsample(labels, 50, seed=3), stratified_subsample(labels, 50, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stratified_subsample(labels, 50, seed=4))
    # the draw is per class, so the class counts do not depend on the seed
    assert np.array_equal(
        np.bincount(labels[a], minlength=10),
        np.bincount(labels[stratified_subsample(labels, 50, seed=4)], minlength=10),
    )


def test_subsample_takes_everything_when_asked_for_as_many_or_more():
    labels = long_tailed_labels()
    for max_points in (None, len(labels), 10_000):
        assert np.array_equal(stratified_subsample(labels, max_points, 0), np.arange(len(labels)))


def test_subsample_with_one_point_per_class_and_too_few_points():
    labels = long_tailed_labels()
    idx = stratified_subsample(labels, 10, seed=0)
    assert sorted(labels[idx]) == list(range(10))
    with pytest.raises(ValueError, match="cannot show all 10 classes"):
        stratified_subsample(labels, 9, seed=0)


# --- the coordinates ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tsne", "pca"])
def test_map_shapes_and_determinism(method):
    x, _ = clusters()
    coords, info = embed_2d(x, method, seed=0)
    assert coords.shape == (len(x), 2) and coords.dtype == np.float32
    assert np.isfinite(coords).all()
    same, _ = embed_2d(x, method, seed=0)
    assert np.array_equal(same, coords)  # same seed, same map
    x32 = torch.as_tensor(x, dtype=torch.float32)  # a tensor or its array: the same map
    assert np.array_equal(embed_2d(x32, method, seed=0)[0], embed_2d(x32.numpy(), method)[0])
    if method == "tsne":
        assert info["pca_dims"] == 32 and info["perplexity"] == 30.0
        assert info["kl_divergence"] >= 0 and info["iterations"] > 0
    else:
        assert 0 < info["explained_variance"] <= 1


def test_small_sets_clip_the_perplexity():
    x, _ = clusters(n_per=5)
    coords, info = embed_2d(x, "tsne", seed=0, perplexity=30.0)
    assert info["perplexity"] == pytest.approx((15 - 1) / 3) and coords.shape == (15, 2)


def test_tsne_reduces_wide_features_to_50_components_first():
    rng = np.random.default_rng(0)
    coords, info = embed_2d(rng.normal(size=(60, 128)), "tsne", seed=0)
    assert info["pca_dims"] == 50 and coords.shape == (60, 2)


def test_pca_of_one_dimensional_features_pads_the_second_axis():
    coords, info = embed_2d(np.array([[-2.0], [-1.0], [1.0], [2.0], [3.0], [-4.0]]), "pca")
    assert coords.shape == (6, 2) and np.all(coords[:, 1] == 0)
    assert info["explained_variance"] == pytest.approx(1.0)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="method must be tsne or pca"):
        embed_2d(np.ones((4, 3)), "umap")
    with pytest.raises(ValueError, match="at least 2 points"):
        embed_2d(np.ones((1, 3)), "pca")
    with pytest.raises(ValueError, match="2-D"):
        embed_2d(np.ones(3), "pca")


# --- the measures -------------------------------------------------------------------------


def test_measures_see_separated_clusters():
    x, labels = clusters()
    coords, _ = embed_2d(x, "tsne", seed=0)
    m = map_measures(x, coords, labels)
    assert m["trustworthiness"] > 0.9
    assert m["silhouette_features"] > 0.5 and m["silhouette_map"] > 0.5
    shuffled = np.random.default_rng(0).permutation(labels)  # labels unrelated to the points
    assert map_measures(x, coords, shuffled)["silhouette_map"] < 0.1


def test_measures_without_two_classes_leave_the_silhouette_out():
    x, _ = clusters(n_per=4)
    coords, _ = embed_2d(x, "pca")
    m = map_measures(x, coords, np.zeros(len(x), dtype=int))
    assert m["silhouette_features"] is None and m["silhouette_map"] is None
    assert 0 <= m["trustworthiness"] <= 1


# --- the features -------------------------------------------------------------------------


def test_features_are_the_eval_views_in_eval_mode_and_the_mode_comes_back():
    cfg = tiny_cfg()
    backbone = tiny_model(cfg).backbone.train()
    bank = TensorImages(images(12))
    settings = EvalSettings(
        num_classes=3, groups=GROUPS3, mean=list(cfg.data.mean), std=list(cfg.data.std), size=32
    )
    idx = torch.tensor([1, 4, 7])
    feats = features_of(backbone, bank, idx, settings)
    assert backbone.training  # put back
    backbone.eval()
    with torch.no_grad():
        expected = extract_bank_features(backbone, bank, idx, settings)
    torch.testing.assert_close(feats, expected)
