"""A searching sweep: each job returns ``sweep.objective`` from its metrics.json, and the
shipped Optuna example (``hydra/sweeper=optuna_sdclr``, README "Searching settings") runs two
trials at tiny size, the way README tells a user to, in a fresh working directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml
from runs import ONE_EPOCH, ok

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="the optuna extra")

FAST = ONE_EPOCH


def test_a_two_trial_optuna_search_maximises_the_linear_accuracy(tmp_path, env):
    cwd = tmp_path / "work"
    cwd.mkdir()
    out = ok(
        subprocess.run(
            [
                sys.executable,
                "-m",
                "sdclr",
                "-m",
                "hydra/sweeper=optuna_sdclr",
                "hydra.sweeper.n_trials=2",
                *FAST,
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=900,
        )
    )
    (sweep,) = sorted((cwd / "outputs" / "multirun").glob("*/*"))
    jobs = sorted(p for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert len(jobs) == 2, out.stdout[-2000:]
    accs = [json.loads((j / "metrics.json").read_text())["linear"]["acc"] for j in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(accs))
    assert set(best["best_params"]) == {"prune.ratio", "pretrain.temperature"}
    assert (sweep / "report.md").exists()
