"""End to end through the real runner on the real CIFAR-10 JPEG copy (tiny settings)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import TINY, ok, sdclr, subprocess_env


@pytest.fixture(scope="module")
def sdclr_job(tmp_path_factory, data_root, cache_dir):
    env = subprocess_env(data_root, cache_dir)
    job = tmp_path_factory.mktemp("job") / "sdclr"
    # the kNN monitor at the last epoch too: the knn stage on the checkpoint must repeat it
    args = ["stage=all", "prune=p90", "split=split1", *TINY, "monitor.knn_every=2"]
    out = ok(sdclr([*args, f"hydra.run.dir={job}"], env))
    return job, out


def test_stage_all_writes_the_documented_results(sdclr_job):
    job, out = sdclr_job
    m = json.loads((job / "metrics.json").read_text())
    pre = m["pretrain"]
    assert pre["epochs"] == 2 and isinstance(pre["final_loss"], float)
    assert len(pre["mask_density"]) == 2
    assert all(abs(d - 0.1) < 1e-3 for d in pre["mask_density"])
    profile = [4500, 2697, 1617, 969, 581, 348, 208, 125, 75, 45]
    assert sorted(pre["split_counts"]["D_i"], reverse=True) == [
        max(1, round(0.02 * c)) for c in profile
    ]
    assert sum(pre["split_counts"]["S_b"]) == 10 and pre["seconds"] > 0
    for stage in ("linear", "fewshot"):
        r = m[stage]
        for key in ("acc", "many", "medium", "few", "std", "per_class", "groups", "seconds"):
            assert key in r, (stage, key)
        assert len(r["per_class"]) == 10 and 0 <= r["acc"] <= 100
        assert sorted(sum(r["groups"].values(), [])) == list(range(10))
        assert [len(r["groups"][g]) for g in ("many", "medium", "few")] == [4, 3, 3]
    assert m["run"]["label"] == "SDCLR p=0.9 dual-BN head3"
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    assert (job / ".hydra" / "config.yaml").is_file() and (job / "config_resolved.yaml").is_file()
    assert (job / "checkpoints" / "pretrain.pt").is_file()
    kinds = {json.loads(line)["kind"] for line in (job / "metrics.jsonl").read_text().splitlines()}
    assert kinds >= {"pretrain", "linear", "fewshot"}
    assert "smoke-scale run" in out.stdout and "Few-shot" in out.stdout


def test_export_loads_into_plain_timm(sdclr_job, tmp_path):
    import timm

    job, _ = sdclr_job
    out = subprocess.run(
        [
            sys.executable,
            "scripts/export_backbone.py",
            str(job / "checkpoints" / "pretrain.pt"),
            str(tmp_path / "bb.pth"),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.returncode == 0, out.stderr
    state = torch.load(tmp_path / "bb.pth")
    model = timm.create_model("resnet18", num_classes=0, channels=(8, 16, 32, 64))
    model.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # the CIFAR stem (see .json)
    model.maxpool = torch.nn.Identity()
    model.load_state_dict(state, strict=True)
    ckpt = torch.load(job / "checkpoints" / "pretrain.pt", weights_only=False)
    assert torch.equal(
        state["layer1.0.bn1.running_mean"], ckpt["model"]["backbone.layer1.0.bn1.bn.0.running_mean"]
    )
    assert "channels=(8, 16, 32, 64)" in json.loads((tmp_path / "bb.pth.json").read_text())["load"]


def test_linear_stage_on_a_given_checkpoint(sdclr_job, tmp_path, env):
    job, _ = sdclr_job
    out = ok(
        sdclr(
            [
                "stage=linear",
                f"stage.checkpoint={job}/checkpoints/pretrain.pt",
                *TINY,
                "linear.lrs=[0.01,1,30]",
                "stage.random_init=true",
                f"hydra.run.dir={tmp_path / 'probe'}",
            ],
            env,
        )
    )
    m = json.loads((tmp_path / "probe" / "metrics.json").read_text())
    assert set(m) == {"run", "linear", "linear_random_init"}
    assert "Full-shot" in out.stdout
    # the baseline: the same probe (grid included) on the architecture at random init
    base = m["linear_random_init"]
    assert [g["lr"] for g in base["grid"]] == [0.01, 1.0, 30.0] and base["checkpoint"] is None
    assert base["train_images"] == m["linear"]["train_images"]
    assert base["grid"] != m["linear"]["grid"]  # other weights, other curves
    assert "Full-shot (linear probe), random init" in out.stdout
    assert f"pretrained {m['linear']['acc']:.2f} vs random init {base['acc']:.2f} (" in out.stdout
    # the grid: one head per rate on the same features, the best validation top-1 chosen
    lin = m["linear"]
    assert [g["lr"] for g in lin["grid"]] == [0.01, 1.0, 30.0]
    assert all(len(g["val_acc"]) == 2 for g in lin["grid"])
    best = max(a for g in lin["grid"] for a in g["val_acc"] if a is not None)
    assert lin["best_val_acc"] == best and lin["lr"] in (0.01, 1.0, 30.0)
    # a collapse is named in the output and in metrics.json, or neither
    assert isinstance(lin["collapsed"], bool)
    assert lin["collapsed"] == ("warning: linear probe collapsed" in out.stderr)
    assert lin["collapsed"] == (lin["collapse_reason"] is not None)


KNN_KEYS = ("acc", "many", "medium", "few", "std")


def test_knn_stage_on_a_given_checkpoint_repeats_the_monitors_last_point(sdclr_job, tmp_path, env):
    job, _ = sdclr_job
    ckpt = job / "checkpoints" / "pretrain.pt"
    out = ok(
        sdclr(["stage=knn", f"stage.checkpoint={ckpt}", *TINY, f"hydra.run.dir={tmp_path}"], env)
    )
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"run", "knn"}
    r = m["knn"]
    for key in (*KNN_KEYS, "per_class", "groups", "k", "temperature", "checkpoint", "seconds"):
        assert key in r, key
    assert len(r["per_class"]) == 10 and 0 <= r["acc"] <= 100
    assert [len(r["groups"][g]) for g in ("many", "medium", "few")] == [4, 3, 3]
    assert r["k"] == min(200, r["bank_images"]) and r["temperature"] == 0.1
    assert r["checkpoint"] == str(ckpt) and r["test_images"] > 0
    assert len(r["class_counts"]) == 10
    # the monitor's classifier with the monitor's settings, on the weights it last measured
    last = json.loads((job / "metrics.json").read_text())["pretrain"]["knn"][-1]
    assert last["epoch"] == 2 and {k: r[k] for k in KNN_KEYS} == {k: last[k] for k in KNN_KEYS}
    assert f"kNN classifier (k={r['k']}, t=0.1)" in out.stdout


def test_stage_all_adds_the_knn_classifier_when_asked(sdclr_job, tmp_path, env):
    """On a copy of the finished stage=all job: pretraining and the probes are done, so the
    same command with stage.knn=true runs the kNN classifier alone, on the job's own
    checkpoint."""
    job, _ = sdclr_job
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    before = json.loads((copy / "metrics.json").read_text())
    args = ["stage=all", "stage.knn=true", "prune=p90", "split=split1", *TINY]
    out = ok(sdclr([*args, f"hydra.run.dir={copy}"], env))
    m = json.loads((copy / "metrics.json").read_text())
    assert set(m) == set(before) | {"knn"}
    assert all(m[s] == before[s] for s in ("pretrain", "linear", "fewshot"))
    assert m["knn"]["checkpoint"] == str(copy / "checkpoints" / "pretrain.pt")
    last = m["pretrain"]["knn"][-1]
    assert {k: m["knn"][k] for k in KNN_KEYS} == {k: last[k] for k in KNN_KEYS}
    assert "linear: already finished" in out.stdout and "kNN classifier (k=" in out.stdout
    assert json.loads((copy / "status.json").read_text())["status"] == "completed"


def test_stage_all_draws_the_map_when_asked(sdclr_job, tmp_path, env):
    """As for stage.knn: the finished job run again with stage.embed=true draws the map of its
    own checkpoint alone, after the probes it already has."""
    job, _ = sdclr_job
    copy = tmp_path / "job"
    shutil.copytree(job, copy)
    before = json.loads((copy / "metrics.json").read_text())
    # the job's own embed.* settings (the defaults): another value would be config drift
    args = ["stage.embed=true", "prune=p90", "split=split1", *TINY]
    out = ok(sdclr([*args, f"hydra.run.dir={copy}"], env))
    m = json.loads((copy / "metrics.json").read_text())
    assert set(m) == set(before) | {"embed"}
    assert all(m[s] == before[s] for s in ("pretrain", "linear", "fewshot"))
    assert m["embed"]["checkpoint"] == str(copy / "checkpoints" / "pretrain.pt")
    assert m["embed"]["path"] == str(copy / "embed.png") and (copy / "embed.png").is_file()
    r = m["embed"]
    assert r["method"] == "tsne" and r["points"] == min(5000, r["test_images"])  # smoke: 200
    assert "fewshot: already finished" in out.stdout
    assert f"embed: t-SNE map of {r['points']} test images" in out.stdout


def test_probe_without_checkpoint_or_with_another_backbone_is_refused(sdclr_job, tmp_path, env):
    job, _ = sdclr_job
    out = sdclr(["stage=fewshot", *TINY, f"hydra.run.dir={tmp_path / 'x'}"], env)
    assert out.returncode == 2 and "stage.checkpoint" in out.stderr
    assert "Traceback" not in out.stderr
    out = sdclr(
        [
            "stage=linear",
            "backbone=resnet50",
            f"stage.checkpoint={job}/checkpoints/pretrain.pt",
            *TINY,
            f"hydra.run.dir={tmp_path / 'y'}",
        ],
        env,
    )
    assert out.returncode == 2 and "resnet18" in out.stderr and "resnet50" in out.stderr
    assert not (tmp_path / "y" / "metrics.json").exists()


def test_missing_data_root_is_one_clear_error(tmp_path, env):
    env = dict(env, SDCLR_DATA=str(tmp_path / "nowhere"))
    out = sdclr([*TINY, f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "SDCLR_DATA" in out.stderr
    assert "Traceback" not in out.stderr


def test_two_split_two_method_sweep_and_report(tmp_path, env):
    sweep = tmp_path / "sweep"
    ok(
        sdclr(
            ["-m", "split=split1,split2", "prune=none,p90", *TINY, f"hydra.sweep.dir={sweep}"],
            env,
            timeout=900,
        )
    )
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 4
    for job in jobs:  # each job's own run.log, with its epoch lines and summary alone
        log = (job / "run.log").read_text()
        assert log.count("pretrain epoch ") == 2 and log.count("job directory:") == 1, log
        assert f"job directory: {job}" in log, log
    out = subprocess.run(
        [sys.executable, "-m", "sdclr.report", str(sweep)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads((sweep / "report.json").read_text())
    text = (sweep / "report.md").read_text()
    assert "SimCLR shared-BN head2" in text and "SDCLR p=0.9 dual-BN head3" in text
    assert (sweep / "group_accuracy.png").stat().st_size > 1000
    assert (sweep / "per_class_accuracy.png").stat().st_size > 1000
    assert report["counts"]["failed"] == 0
    assert "SimCLR" in out.stdout
    # smoke-scale probes often end at chance: each is flagged, counted apart, never averaged
    metrics = [json.loads((j / "metrics.json").read_text()) for j in jobs]
    flagged = [
        (j.name, s)
        for j, m in zip(jobs, metrics)
        for s in ("linear", "fewshot")
        if m[s]["collapsed"]
    ]
    assert report["counts"]["collapsed"] == len(flagged)
    assert sorted((c["job"], c["stage"]) for c in report["collapsed"]) == sorted(flagged)
    for stage in ("linear", "fewshot"):
        averaged = sum(m[stage]["n"] for m in report["methods"])
        assert averaged == 4 - sum(s == stage for _, s in flagged)
    # the paired differences of the two methods, over the splits both probed without collapse
    for stage in ("linear", "fewshot"):
        splits: dict[str, set[int]] = {}
        for m in metrics:
            if not m[stage]["collapsed"]:
                splits.setdefault(m["run"]["label"], set()).add(m["run"]["split"])
        common = set.intersection(*splits.values()) if len(splits) == 2 else set()
        paired = [e for e in report["paired"] if e["stage"] == stage]
        assert [e["n"] for e in paired] == ([len(common)] if common else [])


def test_pretraining_on_the_balanced_control(tmp_path, env):
    job = tmp_path / "db"
    ok(
        sdclr(
            [
                "stage=pretrain",
                "split=split2",
                "split.pretrain_set=D_b",
                "prune=none",
                *TINY,
                "pretrain.epochs=1",
                f"hydra.run.dir={job}",
            ],
            env,
        )
    )
    m = json.loads((job / "metrics.json").read_text())
    assert m["pretrain"]["pretrain_set"] == "D_b"
    assert m["pretrain"]["images"] == sum(m["pretrain"]["split_counts"]["D_b"])
    assert len(set(m["pretrain"]["split_counts"]["D_b"])) == 1  # balanced
    assert m["run"]["label"] == "SimCLR shared-BN head2 on D_b" and m["run"]["split"] == 2
    assert "linear" not in m and "mask_density" not in m["pretrain"]


def test_fused_branches_through_the_cli(tmp_path, env):
    """fuse_branches=true trains SDCLR end to end and says so in metrics.json; on the CPU it
    warns once that the fused pass is meant for CUDA."""
    job = tmp_path / "fused"
    out = ok(
        sdclr(
            [
                "stage=pretrain",
                "prune=p90",
                "fuse_branches=true",
                *TINY,
                "pretrain.epochs=1",
                f"hydra.run.dir={job}",
            ],
            env,
        )
    )
    assert out.stderr.count("fuse_branches=true on a CPU") == 1, out.stderr[-2000:]
    pre = json.loads((job / "metrics.json").read_text())["pretrain"]
    assert pre["fuse_branches"] is True and pre["compile_mode"] is None  # no compile on CPU
    assert torch.isfinite(torch.tensor(pre["final_loss"]))
    assert abs(pre["mask_density"][0] - 0.1) < 1e-3


def test_debug_shows_the_traceback(tmp_path, env):
    env = dict(env, SDCLR_DATA=str(tmp_path / "nowhere"))
    out = sdclr([*TINY, "debug=true", f"hydra.run.dir={tmp_path / 'run'}"], env)
    assert out.returncode != 0
    assert "DataError" in out.stderr and "does not exist" in out.stderr


def test_the_cuda_defaults_run_on_the_cpu(tmp_path, env):
    """What a GPU run does by default (torch.compile with inductor, bf16 autocast,
    channels_last), through the runner on the CPU for one epoch of SDCLR, the last batch odd
    and two threads: the combination that crashed in oneDNN before the unit-stride shortcut
    (scripts/onednn_strided_pointwise_crash.py). The kNN monitor's epoch-0 pass compiles the
    no-grad graph too."""
    job = tmp_path / "cuda-defaults"
    out = ok(
        sdclr(
            [
                "stage=pretrain",
                "prune=p90",
                *TINY,
                "pretrain.epochs=1",
                "compile=true",
                "precision=bf16",
                "channels_last=true",
                "monitor.knn_every=1",
                f"hydra.run.dir={job}",
            ],
            dict(env, OMP_NUM_THREADS="2"),
        )
    )
    pre = json.loads((job / "metrics.json").read_text())["pretrain"]
    assert pre["images"] % pre["batch_size"] % 2 == 1, "the last batch should be odd"
    assert (pre["precision"], pre["compile"], pre["channels_last"]) == ("bf16", True, True)
    assert pre["compile_mode"] == "default" and pre["fuse_branches"] is False
    assert torch.isfinite(torch.tensor(pre["final_loss"])) and len(pre["knn"]) == 2
    assert json.loads((job / "status.json").read_text())["status"] == "completed", out.stdout
