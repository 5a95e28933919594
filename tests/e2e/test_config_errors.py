"""The sdclr command refuses bad config values with a clear message, before any work."""

from __future__ import annotations

import subprocess
import sys


def test_cli_rejects_bad_values_before_any_work(tmp_path, env):
    for args, key in [
        (["prune.ratio=1.2"], "prune.ratio"),
        (["pretrain.epoch=3"], "epoch"),
        (["prune=p95"], "p95"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "sdclr", *args, f"hydra.run.dir={tmp_path / 'run'}"],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode != 0
        assert key in out.stderr, out.stderr
        assert "Traceback" not in out.stderr
        assert not (tmp_path / "run" / "metrics.json").exists()
