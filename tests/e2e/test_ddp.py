"""torchrun on the CPU (gloo, 2 processes) runs and resumes the suite end to end; the kNN
monitor, shared over the ranks, gives the single process's numbers; the configured
collective timeout is announced; compile=true is refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys

from runs import TINY, ok, sdclr


def torchrun(*args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sdclr",
        *TINY,
        *args,
    ]


def test_torchrun_pretrain_probe_and_resume(tmp_path, env):
    job = tmp_path / "job"
    cmd = torchrun("distributed.timeout_min=45", f"hydra.run.dir={job}")
    out = ok(
        subprocess.run(
            [*cmd, "stage=pretrain"], capture_output=True, text=True, env=env, timeout=600
        )
    )
    assert "process group: 2 ranks over gloo, collectives time out after 45 min" in out.stdout
    # one line per epoch, from rank 0 alone, on stdout and in the job's run.log
    assert out.stdout.count("pretrain epoch 2/2") == 1, out.stdout
    assert (job / "run.log").read_text().count("pretrain epoch 2/2") == 1
    m = json.loads((job / "metrics.json").read_text())
    assert m["pretrain"]["epochs"] == 2 and "linear" not in m
    # the kNN monitor at the random initialisation: each rank encoded its share of the pool
    # and of the test set, and the curve's first point is the single process's
    single = tmp_path / "single"
    ok(sdclr([*TINY, "stage=pretrain", "pretrain.epochs=1", f"hydra.run.dir={single}"], env))
    alone = json.loads((single / "metrics.json").read_text())["pretrain"]["knn"]
    assert m["pretrain"]["knn"] == alone and alone[0]["epoch"] == 0
    # the same job continued with stage=all: the finished pretrain is not redone; the kNN
    # classifier (stage.knn) runs on every rank before the probes rank 0 runs alone
    out = ok(
        subprocess.run(
            [*cmd, "stage=all", "stage.knn=true"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    )
    assert out.stdout.count("pretrain: already finished") == 1  # printed by rank 0 only
    m = json.loads((job / "metrics.json").read_text())
    assert {"pretrain", "knn", "linear", "fewshot"} <= set(m)
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
    # shared over the ranks, the kNN classifier gives the single process's numbers
    knn = tmp_path / "knn"
    ckpt = f"stage.checkpoint={job}/checkpoints/pretrain.pt"
    ok(sdclr([*TINY, "stage=knn", ckpt, f"hydra.run.dir={knn}"], env))
    alone = json.loads((knn / "metrics.json").read_text())["knn"]
    keys = ("acc", "many", "medium", "few", "std", "per_class", "k", "bank_images")
    assert {k: m["knn"][k] for k in keys} == {k: alone[k] for k in keys}


def test_torchrun_refuses_compile_true_before_any_work(tmp_path, env):
    job = tmp_path / "job"
    out = subprocess.run(
        torchrun("compile=true", f"hydra.run.dir={job}"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode != 0
    errors = {line for line in out.stderr.splitlines() if line.startswith("error:")}
    assert len(errors) == 1, out.stderr[-3000:]  # the same line from each rank
    (line,) = errors
    assert line.startswith("error: config key 'compile': ") and "set compile=false" in line
    assert not (job / "checkpoints").exists()
