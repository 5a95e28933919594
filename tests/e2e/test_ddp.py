"""torchrun on the CPU (gloo, 2 processes) runs and resumes the suite end to end."""

from __future__ import annotations

import json
import subprocess
import sys

from runs import TINY, ok


def test_torchrun_pretrain_probe_and_resume(tmp_path, env):
    job = tmp_path / "job"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "sdclr",
        *TINY,
        f"hydra.run.dir={job}",
    ]
    ok(
        subprocess.run(
            [*cmd, "stage=pretrain"], capture_output=True, text=True, env=env, timeout=600
        )
    )
    m = json.loads((job / "metrics.json").read_text())
    assert m["pretrain"]["epochs"] == 2 and "linear" not in m
    # the same job continued with stage=all: the finished pretrain is not redone
    out = ok(
        subprocess.run([*cmd, "stage=all"], capture_output=True, text=True, env=env, timeout=600)
    )
    assert out.stdout.count("pretrain: already finished") == 1  # printed by rank 0 only
    m = json.loads((job / "metrics.json").read_text())
    assert {"pretrain", "linear", "fewshot"} <= set(m)
    assert json.loads((job / "status.json").read_text())["status"] == "completed"
