"""The kNN classifier stage (sdclr.cli.stages, ``stage=knn``): the monitor's numbers on the
same model and data, a hand computation, its settings and where it sits in ``stage=all``; and
the map of the test features (``stage=embed``) on the same kind of job."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tiny import GROUPS3, images, tiny_cfg, tiny_model

from sdclr.augment.ops import normalize, to_float
from sdclr.cli.job import planned_stages
from sdclr.cli.stages import eval_settings, knn_encoder, knn_settings
from sdclr.config.compose import compose_config
from sdclr.data.banks import TensorImages
from sdclr.eval.knn import knn_evaluate
from sdclr.eval.monitor import KnnMonitor

KEYS = ("acc", "many", "medium", "few", "std", "per_class", "groups", "k", "temperature")


def tiny_job(cfg, train, train_labels, pool, test, test_labels):
    """What knn_encoder reads of a started job: config, device, data, the split's pool, the
    D_i counts and the Many / Medium / Few groups."""
    data = SimpleNamespace(
        train=TensorImages(train),
        train_labels=train_labels,
        test=TensorImages(test),
        test_labels=test_labels,
        split=SimpleNamespace(pool=pool),
        num_classes=3,
    )
    return SimpleNamespace(
        cfg=cfg,
        device=torch.device("cpu"),
        data=data,
        groups=GROUPS3,
        counts={"D_i": [9, 5, 2]},
        main_process=True,
    )


@pytest.mark.numerics
def test_knn_stage_gives_the_monitors_numbers_and_the_hand_computed_ones():
    """The bank is the pool's images of the training set, the queries the test set, as the
    monitor has them; in float64 (tests/numerics.py), so a near tie cannot flip."""
    cfg = tiny_cfg("knn.k=5", "knn.temperature=0.5", "knn.batch_size=7")
    model = tiny_model(cfg, dtype=torch.float64)
    train, train_labels = images(30, seed=0), torch.arange(30) % 3
    test, test_labels = images(12, seed=1), torch.arange(12) % 3
    pool = torch.tensor([1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16, 17, 20, 22, 27])
    job = tiny_job(cfg, train, train_labels, pool, test, test_labels)

    out = knn_encoder(job, model)

    monitor = KnnMonitor(
        1,
        TensorImages(train),
        pool,
        train_labels[pool],
        TensorImages(test),
        test_labels,
        eval_settings(job, 7),
        k=5,
        temperature=0.5,
    )
    watched = monitor(model.backbone)
    assert {k: out[k] for k in watched} == watched  # acc, many, medium, few, std, k
    model.eval()
    with torch.no_grad():  # by hand: one plain forward of each set, then the vote

        def feats(x):
            x = normalize(to_float(x), list(cfg.data.mean), list(cfg.data.std))
            return model.backbone(x.double())

        ref = knn_evaluate(
            feats(train[pool]).float(),
            train_labels[pool],
            feats(test).float(),
            test_labels,
            3,
            GROUPS3,
            5,
            0.5,
        )
    assert {k: out[k] for k in KEYS} == {k: ref[k] for k in KEYS}
    assert out["k"] == 5 and out["temperature"] == 0.5
    assert out["bank_images"] == 15 and out["test_images"] == 12
    assert out["class_counts"] == [9, 5, 2] and out["seconds"] >= 0


def test_knn_settings_default_to_the_monitors():
    assert knn_settings(compose_config([])) == (200, 0.1, 512)
    follows = compose_config(["monitor.knn_k=20", "monitor.knn_t=0.07", "monitor.batch_size=64"])
    assert knn_settings(follows) == (20, 0.07, 64)
    own = compose_config(["monitor.knn_k=20", "knn.k=7", "knn.temperature=0.2", "knn.batch_size=8"])
    assert knn_settings(own) == (7, 0.2, 8)


def test_stage_all_runs_the_knn_classifier_only_when_asked():
    assert planned_stages(compose_config([])) == ["pretrain", "linear", "fewshot"]
    # right after pretraining: under torchrun every rank takes part, so it must not wait
    # behind the probes that rank 0 alone runs
    assert planned_stages(compose_config(["stage.knn=true"])) == [
        "pretrain",
        "knn",
        "linear",
        "fewshot",
    ]
    assert planned_stages(compose_config(["stage=knn"])) == ["knn"]


def test_stage_all_draws_the_map_last_only_when_asked():
    assert planned_stages(compose_config(["stage.embed=true", "stage.knn=true"])) == [
        "pretrain",
        "knn",
        "linear",
        "fewshot",
        "embed",
    ]
    assert planned_stages(compose_config(["stage=embed", "stage.embed=true"])) == ["embed"]


def test_embed_stage_maps_the_subsampled_test_features_and_writes_the_png(tmp_path):
    """stage=embed (embed_encoder) on a job like knn's: the class-stratified subsample of the
    test set, encoded as the kNN classifier does, laid out (PCA here, exact) from the same
    features as by hand; the PNG, the coordinates and the W&B image in the job directory."""
    import numpy as np

    from sdclr.cli.stages import embed_encoder
    from sdclr.eval.embed import embed_2d, stratified_subsample

    cfg = tiny_cfg("embed.method=pca", "embed.max_points=9", "embed.batch_size=4", "seed=3")
    model = tiny_model(cfg, dtype=torch.float64)
    test, test_labels = images(15, seed=1), torch.arange(15) % 3
    job = tiny_job(cfg, images(3), torch.arange(3), torch.arange(3), test, test_labels)
    logged = {}
    job.data.classes = ["cat", "dog", "emu"]
    job.dir, job.checkpoint = tmp_path, tmp_path / "pretrain.pt"
    job.tracker = SimpleNamespace(log_files=lambda images: logged.update(images))

    out = embed_encoder(job, model, "embed")

    idx = stratified_subsample(test_labels.numpy(), 9, seed=3)
    assert np.bincount(test_labels.numpy()[idx]).tolist() == [3, 3, 3]
    saved = np.load(tmp_path / "embed.npz")
    assert saved["test_index"].tolist() == idx.tolist()
    model.eval()
    with torch.no_grad():
        x = normalize(to_float(test[torch.as_tensor(idx)]), list(cfg.data.mean), list(cfg.data.std))
        ref, info = embed_2d(model.backbone(x.double()).float(), "pca")
    np.testing.assert_allclose(saved["coords"], ref, atol=1e-5)
    assert out["explained_variance"] == pytest.approx(info["explained_variance"], abs=1e-6)
    assert out["points"] == 9 and out["test_images"] == 15 and out["method"] == "pca"
    assert out["path"] == str(tmp_path / "embed.png") and logged == {
        "embed": tmp_path / "embed.png"
    }
    assert (tmp_path / "embed.png").read_bytes()[:4] == b"\x89PNG"
    assert out["groups"] == GROUPS3 and out["class_counts"] == [9, 5, 2]
    assert set(out) >= {"trustworthiness", "silhouette_features", "silhouette_map", "seconds"}
