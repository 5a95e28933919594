"""``sdclr stage=embed stage.checkpoint=PATH`` end to end, as the README runs it, on a tiny
checkpoint pretrained here (the real CIFAR-10 JPEG copy at the smoke settings): the map's
PNG and coordinates in the job directory, its record in metrics.json, the image in W&B, the
link in the sweep report, and bad input as stage=knn reports it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from runs import TINY, ok, sdclr, subprocess_env
from wandb_log import logged_keys, media_types

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, data_root, cache_dir):
    env = subprocess_env(data_root, cache_dir)
    job = tmp_path_factory.mktemp("pretrained") / "job"
    ok(sdclr(["stage=pretrain", *TINY, "monitor.knn_every=0", f"hydra.run.dir={job}"], env))
    return job / "checkpoints" / "pretrain.pt"


def test_embed_stage_draws_the_map_records_it_and_logs_it(checkpoint, tmp_path, env):
    job = tmp_path / "sweep" / "0_embed"
    env = dict(env, WANDB_DISABLE_GIT="true")
    env.pop("WANDB_MODE", None)  # no API key: offline
    args = ["stage=embed", f"stage.checkpoint={checkpoint}", *TINY, "embed.max_points=100"]
    out = ok(sdclr([*args, "logger=wandb", f"hydra.run.dir={job}"], env))
    m = json.loads((job / "metrics.json").read_text())
    assert set(m) == {"run", "embed"}
    r = m["embed"]
    assert r["path"] == str(job / "embed.png") and r["checkpoint"] == str(checkpoint)
    assert r["method"] == "tsne" and r["points"] == 100 and r["test_images"] > 100
    assert r["seed"] == 0 and r["feature_dim"] == 64 and r["perplexity"] == 30.0
    assert 0.5 < r["trustworthiness"] <= 1 and -1 <= r["silhouette_map"] <= 1
    assert r["kl_divergence"] >= 0 and r["seconds"] >= r["map_seconds"] > 0
    assert [len(r["groups"][g]) for g in ("many", "medium", "few")] == [4, 3, 3]
    png = (job / "embed.png").read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 10_000
    coords = np.load(job / "embed.npz")
    assert coords["coords"].shape == (100, 2) and len(coords["test_index"]) == 100
    assert sorted(set(coords["labels"].tolist())) == list(range(10))  # every class on the map
    assert f"embed: t-SNE map of 100 test images in {r['seconds']:.1f} s" in out.stdout
    assert "embed: encoding 100 of" in out.stdout
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    # W&B (offline): the map as an image, its numbers in the summary
    (log,) = (job / "wandb").glob("offline-run-*/run-*.wandb")
    assert media_types(log)["embed"] == "image-file"
    assert {"embed/trustworthiness", "embed/points"} <= logged_keys(log)["summary"]
    # the sweep report over the job's directory links the map
    report = subprocess.run(
        [sys.executable, "-m", "sdclr.report", str(tmp_path / "sweep")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert report.returncode == 0, report.stderr
    md = (tmp_path / "sweep" / "report.md").read_text()
    assert "![0_embed embed](0_embed/embed.png)" in md


def test_embed_stage_pca_with_the_random_init_map(checkpoint, tmp_path, env):
    args = ["stage=embed", f"stage.checkpoint={checkpoint}", *TINY, "embed.method=pca"]
    ok(
        sdclr(
            [*args, "embed.max_points=null", "stage.random_init=true", f"hydra.run.dir={tmp_path}"],
            env,
        )
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"run", "embed", "embed_random_init"}
    ours, base = m["embed"], m["embed_random_init"]
    assert ours["points"] == ours["test_images"] == base["points"]  # null: every test image
    assert 0 < ours["explained_variance"] <= 1 and base["checkpoint"] is None
    assert base["path"] == str(tmp_path / "embed_random_init.png")
    for name in ("embed.png", "embed_random_init.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_MAGIC


def test_bad_input_is_one_line_as_for_the_knn_stage(checkpoint, tmp_path, env):
    def run(stage, *args):
        out = sdclr([f"stage={stage}", *TINY, *args, f"hydra.run.dir={tmp_path / stage}"], env)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        (line,) = out.stderr.strip().splitlines()
        return line.replace(str(tmp_path / stage), "DIR")

    missing = f"stage.checkpoint={tmp_path / 'nowhere.pt'}"
    assert run("embed", missing) == run("knn", missing)
    assert "not found" in run("embed", missing)
    assert run("embed") == run("knn").replace("stage=knn", "stage=embed")
    assert "stage.checkpoint" in run("embed")
    line = run("embed", f"stage.checkpoint={checkpoint}", "embed.max_points=5")
    assert line.startswith("error: config key 'embed.max_points': 5 points cannot show all 10")
    assert run("embed", "embed.method=umap") == (
        "error: config key 'embed.method': must be tsne or pca, got 'umap'"
    )
