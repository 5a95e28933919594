"""A 2-D map of an encoder's test features (``stage=embed``): t-SNE (default) or PCA.

The test images are encoded under the evaluation view in eval mode, as the kNN classifier
sees them (:mod:`sdclr.eval.features`); the features are L2-normalised (the kNN classifier's
cosine geometry) and laid out in two dimensions with scikit-learn. t-SNE first reduces them
to at most 50 principal components (the usual preprocessing: it denoises and makes the
neighbour search cheaper) and starts from the PCA layout, so the map is the same run after
run on the same machine (tested). Its cost grows with the number of points, so the map may
be drawn on a class-stratified subsample seeded by ``seed`` (:func:`stratified_subsample`)
that keeps every class and the classes' proportions.

Beside the coordinates, a few numbers say how much to trust the picture
(:func:`map_measures`): the trustworthiness of the map (how many of each point's 2-D
neighbours are neighbours in feature space), and the class silhouette in feature space
(cosine) and on the map, so two checkpoints can be compared without eyeballing.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sdclr.data.banks import Images
from sdclr.eval.features import EvalSettings, extract_bank_features
from sdclr.models.contrastive import evaluating

#: The 2-D layouts ``embed.method`` takes.
METHODS = ("tsne", "pca")
#: Principal components t-SNE starts from (the features are reduced to these first).
TSNE_PCA_DIMS = 50
#: Neighbours per point of the trustworthiness measure (scikit-learn's default is 5).
TRUST_NEIGHBOURS = 10


def stratified_subsample(labels: np.ndarray, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted positions of at most ``max_points`` of ``labels``, drawn per class with a
    generator seeded by ``seed``: each class gets its share of ``max_points`` in proportion
    to its size (largest remainders first, ties to the lower class id) and at least one
    point, so every class stays on the map. All positions when ``max_points`` is None or at
    least ``len(labels)``. Raises ValueError when ``max_points`` is below the number of
    classes present."""
    labels = np.asarray(labels).astype(np.int64)
    n = len(labels)
    if max_points is None or max_points >= n:
        return np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    if max_points < len(classes):
        raise ValueError(
            f"embed: {max_points} points cannot show all {len(classes)} classes; "
            f"raise max_points to at least {len(classes)}"
        )
    exact = max_points * counts / n
    quota = np.clip(np.floor(exact).astype(np.int64), 1, counts)
    # largest remainder first; a stable sort keeps ties in class order
    while quota.sum() < max_points:
        room = np.flatnonzero(quota < counts)
        order = room[np.argsort(-(exact[room] - quota[room]), kind="stable")]
        quota[order[: max_points - quota.sum()]] += 1
    while quota.sum() > max_points:  # the one-point floor took more than the share
        spare = np.flatnonzero(quota > 1)
        order = spare[np.argsort(-(quota[spare] - exact[spare]), kind="stable")]
        quota[order[: quota.sum() - max_points]] -= 1
    rng = np.random.default_rng(seed)
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=int(q), replace=False)
        for c, q in zip(classes, quota)
    ]
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _normalised(features: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embed: features must be 2-D [N, D]; got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def embed_2d(
    features: np.ndarray | torch.Tensor,
    method: str = "tsne",
    seed: int = 0,
    perplexity: float = 30.0,
) -> tuple[np.ndarray, dict]:
    """2-D coordinates [N, 2] (float32) of the L2-normalised ``features`` [N, D], and what
    was used and measured on the way: ``pca``: ``explained_variance`` (the two components'
    share of the variance); ``tsne``: ``perplexity`` (as used: at most (N - 1) / 3),
    ``pca_dims``, ``kl_divergence`` and ``iterations``. Deterministic for a given ``seed``."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method not in METHODS:
        raise ValueError(f"embed: method must be {' or '.join(METHODS)}; got {method!r}")
    x = _normalised(features)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"embed: a map needs at least 2 points; got {n}")
    if method == "pca":
        k = min(2, n, d)
        pca = PCA(n_components=k, svd_solver="full")
        coords = np.zeros((n, 2))
        coords[:, :k] = pca.fit_transform(x)
        return coords.astype(np.float32), {
            "explained_variance": float(pca.explained_variance_ratio_.sum())
        }
    dims = min(TSNE_PCA_DIMS, n, d)
    if dims < d:
        x = PCA(n_components=dims, svd_solver="full").fit_transform(x)
    used = float(min(perplexity, max((n - 1) / 3, 1e-3)))
    tsne = TSNE(
        n_components=2,
        perplexity=used,
        init="pca",
        learning_rate="auto",
        random_state=seed,
    )
    coords = tsne.fit_transform(x)
    return coords.astype(np.float32), {
        "perplexity": used,
        "pca_dims": int(dims),
        "kl_divergence": float(tsne.kl_divergence_),
        "iterations": int(tsne.n_iter_),
    }


def map_measures(
    features: np.ndarray | torch.Tensor, coords: np.ndarray, labels: np.ndarray
) -> dict[str, float | None]:
    """How faithful and how separated the map is: ``trustworthiness`` (scikit-learn's, with
    :data:`TRUST_NEIGHBOURS` neighbours; 1 = every point's 2-D neighbours are close in
    feature space), ``silhouette_features`` (class silhouette of the normalised features,
    cosine) and ``silhouette_map`` (class silhouette of the 2-D coordinates); a silhouette is
    None with a single class or a point per class."""
    from sklearn.manifold import trustworthiness
    from sklearn.metrics import silhouette_score

    x = _normalised(features)
    labels = np.asarray(labels)
    n = len(x)
    out: dict[str, float | None] = {"trustworthiness": None}
    k = min(TRUST_NEIGHBOURS, (n - 1) // 2)  # scikit-learn's bound: k < n / 2
    if k >= 1:
        out["trustworthiness"] = float(trustworthiness(x, coords, n_neighbors=k))
    separable = 2 <= len(np.unique(labels)) <= n - 1
    out["silhouette_features"] = (
        float(silhouette_score(x, labels, metric="cosine")) if separable else None
    )
    out["silhouette_map"] = float(silhouette_score(coords, labels)) if separable else None
    return out


@torch.no_grad()
def features_of(
    backbone: nn.Module,
    images: Images,
    idx: torch.Tensor,
    settings: EvalSettings,
) -> torch.Tensor:
    """Features [len(idx), D] of ``images[idx]`` under the evaluation view with ``backbone``
    in eval mode (every submodule's train / eval flag put back afterwards)."""
    with evaluating(backbone):
        return extract_bank_features(backbone, images, idx, settings)
