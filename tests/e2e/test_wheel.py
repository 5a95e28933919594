"""sdclr as a user installs it: a wheel built from the checkout, installed into a fresh virtual
environment and run from a folder outside the checkout. The configs and the shipped split files
must come from inside the installed package, and what a run generates (split files, lists, job
directories) must go where the user can write, never into the package.

The fresh environment gets its dependencies offline, from the environment under test (which
holds the locked versions): a .pth file puts that environment's site-packages on its path,
after its own. That folder holds the editable install of the checkout only as a finder that
its own .pth file would install, and .pth files are not read from folders a .pth file adds;
the test checks that `import sdclr` is the wheel's."""

from __future__ import annotations

import json
import os
import re
import shutil
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from imagetree import SMALL_FOLDER_RUN, folder_args
from runs import seen_while_running, subprocess_env

REPO = Path(__file__).resolve().parents[2]
# 1 epoch of everything at 2 % of CIFAR-10 (tests/runs.py's TINY, shortened)
TINY1 = [
    "data.fraction=0.02",
    "backbone.channels=[8,16,32,64]",
    "pretrain.epochs=1",
    "pretrain.warmup_epochs=0",
    "pretrain.batch_size=64",
    "linear.epochs=1",
    "fewshot.epochs=1",
    "smoke=true",
    "device=cpu",
]


@dataclass
class Installed:
    bin: Path  # the fresh environment's bin/
    package: Path  # its site-packages/sdclr
    work: Path  # the working directory of the runs, outside the checkout
    env: dict[str, str]
    before: dict[str, tuple[int, int]]  # the package's files when installed: size, mtime


def files_under(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(f.relative_to(folder)): (f.stat().st_size, f.stat().st_mtime_ns)
        for f in folder.rglob("*")
        if f.is_file()
    }


def run(cmd: list, inst: Installed, timeout: int = 300) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        env=inst.env,
        cwd=inst.work,
        timeout=timeout,
    )
    assert out.returncode == 0, (
        f"{cmd}: exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory, data_root, cache_dir) -> Installed:
    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy of what the wheel is made of, so no build/ or stale file of the
    # checkout gets in and the checkout is not written to
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("sdclr", "conf", "splits"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp / "dist"
    build = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--skip-dependency-check"]
    subprocess.run(
        [*build, "--outdir", str(dist), str(src)], check=True, capture_output=True, timeout=300
    )
    (wheel,) = dist.glob("sdclr-*.whl")

    fresh = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True)
    python = fresh / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    Path(purelib, "_tested_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    subprocess.run(
        [*pip, "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )

    env = subprocess_env(data_root, cache_dir)
    env.pop("PYTHONPATH", None)
    env.update(PATH=f"{fresh / 'bin'}{os.pathsep}{env.get('PATH', '')}", VIRTUAL_ENV=str(fresh))
    work = tmp / "work"
    work.mkdir()
    package = Path(purelib) / "sdclr"
    return Installed(fresh / "bin", package, work, env, files_under(package))


def test_the_wheel_holds_the_configs_and_split_files_and_is_what_runs(installed, env):
    pkg = installed.package
    assert (pkg / "conf" / "config.yaml").is_file()
    assert (pkg / "conf" / "hydra" / "help" / "sdclr.yaml").is_file()
    assert (pkg / "conf" / "hydra" / "launcher" / "slurm.yaml").is_file()
    for f in (REPO / "conf").rglob("*.yaml"):
        assert (pkg / "conf" / f.relative_to(REPO / "conf")).is_file(), f
    data = pkg / "splits_data"
    packaged = {str(f.relative_to(data)) for f in data.rglob("*") if f.is_file()}
    official = {
        str(f.relative_to(REPO / "splits")) for f in (REPO / "splits").rglob("official/*/*")
    }
    assert len(official) == 39 and {"README.md", "official/SHA256SUMS"} | official <= packaged
    assert {f"cifar10/split{i}.npz" for i in range(1, 6)} <= packaged
    probe = (
        "import json, sdclr, sdclr.utils.io as io; print(json.dumps([sdclr.__file__, "
        "str(io.CONF_DIR), str(io.OFFICIAL_SPLITS_DIR), io.REPO]))"
    )
    where, conf, official_dir, repo = json.loads(
        run([installed.bin / "python", "-c", probe], installed).stdout
    )
    assert Path(where).parent == pkg  # the wheel's sdclr, not the checkout's editable one
    assert Path(conf) == pkg / "conf" and Path(official_dir) == data / "official"
    assert repo is None


def test_help_and_config_work_outside_the_checkout(installed, env):
    out = run([installed.bin / "sdclr", "--help"], installed).stdout
    assert out.startswith("sdclr: self-supervised contrastive learning on long-tailed images")
    assert "powered by hydra" not in out.lower()
    assert "data: cifar100_lt, cifar10_lt, folder, imagenet100_lt, imagenet_lt_exp" in out
    for command in ("sdclr stage=linear stage.checkpoint=", "sdclr -m split=split1,"):
        assert command in out
    # the shipped configs, and a user's own config folder next to them
    mine = installed.work / "myconf" / "split"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text("index: 3\npretrain_set: D_b\n")
    args = ["--config-dir", installed.work / "myconf", "split=mine", "--cfg", "job"]
    out = run([installed.bin / "sdclr", *args], installed).stdout
    assert "name: cifar10_lt" in out and "source: official" in out
    assert "index: 3" in out and "pretrain_set: D_b" in out


#: the first pretrain epoch's line of the tiny run below
FIRST_EPOCH = re.compile(r"pretrain epoch 1/2  loss ")


def job_dirs(inst: Installed) -> set[Path]:
    """The job directories under the working directory's default outputs/runs/<date>/."""
    return set((inst.work / "outputs" / "runs").glob("*/*"))


def new_job(inst: Installed, before: set[Path], timeout: float = 300) -> Path:
    """The one job directory that appeared since ``before`` (waits for it)."""
    deadline = time.monotonic() + timeout
    while not (new := job_dirs(inst) - before):
        if time.monotonic() > deadline:
            raise AssertionError(f"no new job directory under {inst.work / 'outputs' / 'runs'}")
        time.sleep(0.2)
    (job,) = new
    return job


def run_job(cmd: list, inst: Installed) -> Path:
    """Run ``cmd`` (an sdclr run with Hydra's default job directory); its job directory."""
    before = job_dirs(inst)
    run(cmd, inst)
    return new_job(inst, before, timeout=0)


def test_a_tiny_run_reads_the_shipped_split_files_and_logs_as_it_goes(installed, env):
    """The default run (the reference's split 1, checked against the shipped SHA256SUMS):
    pretraining and both probes, its job directory where Hydra puts it by default, its run.log
    growing line by line while it runs (stdout to a file, as under SLURM or nohup)."""
    args = [a for a in TINY1 if not a.startswith(("pretrain.epochs", "pretrain.warmup"))]
    args += ["pretrain.epochs=2", "pretrain.warmup_epochs=1"]
    env = {k: v for k, v in installed.env.items() if k != "PYTHONUNBUFFERED"}
    stdout = installed.work / "tiny.out"
    before = job_dirs(installed)
    with stdout.open("w") as out:
        proc = subprocess.Popen(
            [str(installed.bin / "sdclr"), *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=installed.work,
        )
        try:
            job = new_job(installed, before)
            seen = seen_while_running(proc, [job / "run.log"], FIRST_EPOCH, timeout=600)
            assert seen, "run.log was written at the end"
            assert proc.wait(timeout=600) == 0, stdout.read_text()[-3000:]
        finally:
            proc.kill()
    assert job.name.endswith("_cifar10_lt_split1_sdclr-p90"), job
    assert re.search(r"^(\[[0-9: -]+\] )?pretrain epoch 2/2  ", stdout.read_text(), re.M)
    m = json.loads((job / "metrics.json").read_text())
    assert m["run"]["split_source"] == "official"
    assert str(installed.package / "splits_data" / "official") in m["run"]["split_files"]
    assert "SHA-256 checked" in m["run"]["split_files"]
    assert "acc" in m["linear"] and "acc" in m["fewshot"]


def test_knn_embed_and_the_timm_export_on_the_runs_checkpoint(installed, env):
    """What a researcher asks of the checkpoint afterwards, without retraining: the kNN
    classifier, the 2-D map of the test features, and the export that plain timm loads."""
    (ckpt,) = (installed.work / "outputs" / "runs").glob("*/*/checkpoints/pretrain.pt")
    small = ["data.fraction=0.02", "smoke=true", "device=cpu", f"stage.checkpoint={ckpt}"]
    knn_job = run_job([installed.bin / "sdclr", "stage=knn", *small], installed)
    knn = json.loads((knn_job / "metrics.json").read_text())["knn"]
    assert {"acc", "many", "medium", "few"} <= set(knn)
    embed_args = ["stage=embed", "embed.max_points=100", *small]
    embed_job = run_job([installed.bin / "sdclr", *embed_args], installed)
    embed = json.loads((embed_job / "metrics.json").read_text())["embed"]
    assert (embed_job / "embed.png").stat().st_size > 0 and embed["points"] == 100

    out = run([installed.bin / "sdclr-export", ckpt, "--out", "backbone"], installed).stdout
    lines = [s.strip() for s in out.split("load it with", 1)[1].splitlines()[1:] if s.strip()]
    user = "\n".join(
        [
            *lines,
            "x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))",
            "print(tuple(model.eval()(x).shape))",
            "import sys; assert not any(m.startswith('sdclr') for m in sys.modules)",
        ]
    )
    loaded = run([installed.bin / "python", "-c", user], installed).stdout
    assert loaded.strip() == "(2, 64)"  # the pooled features of backbone.channels' last width


def test_generated_splits_and_lists_go_where_the_user_writes(installed, tree, env):
    """A split file (python -m sdclr.splits, into split.dir) and an image folder's lists
    (generated by a run, by default in <data.cache_dir>/splits)."""
    mine = installed.work / "mysplits"
    args = ["--splits", "2", "data=cifar10_lt", "split.source=generated", f"split.dir={mine}"]
    run([installed.bin / "python", "-m", "sdclr.splits", *args], installed)
    assert (mine / "cifar10" / "split2_if100_val500_fs45.npz").is_file()
    # another imbalance factor, as a user asks for it (no split.dir): its own file in
    # $SDCLR_CACHE/splits, never the shipped imbalance-100 split2.npz
    args = ["--splits", "2", "data=cifar10_lt", "data.imbalance_factor=50"]
    out = run([installed.bin / "python", "-m", "sdclr.splits", *args], installed).stdout
    own = Path(installed.env["SDCLR_CACHE"]) / "splits" / "cifar10" / "split2_if50_val500_fs45.npz"
    assert f"{own}: D_i" in out and "counts [4500, " in out and ", 90]" in out

    cache = installed.work / "cache"
    folder = [*folder_args(tree), f"data.cache_dir={cache}"]
    job = installed.work / "folder-job"
    small = [
        *SMALL_FOLDER_RUN,
        "stage=pretrain",
        "smoke=true",
        "device=cpu",
    ]
    run([installed.bin / "sdclr", *folder, *small, f"hydra.run.dir={job}"], installed)
    (lists,) = (cache / "splits" / "folder").glob("*/split1")
    assert (lists / "meta.json").is_file() and (lists / "D_i.txt").is_file()
    m = json.loads((job / "metrics.json").read_text())
    assert str(lists) in m["run"]["split_files"]


def test_nothing_was_written_into_the_installed_package(installed, env):
    """After the runs above (pytest runs a file's tests in order): no file added or changed."""
    after = files_under(installed.package)
    assert sorted(set(after) - set(installed.before)) == []
    assert {f for f in after if after[f] != installed.before.get(f)} == set()
