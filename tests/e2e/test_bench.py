"""`make bench-quick`: the benchmark runs on CPU and writes its JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import subprocess
import sys


def test_quick_benchmark_writes_table_and_json(tmp_path, env):
    out_json = tmp_path / "bench.json"
    out = subprocess.run(
        [sys.executable, "-m", "sdclr.bench", "--quick", "--out", str(out_json)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out_json.read_text())
    for key in (
        "sdclr_step_over_two_plain",
        "sdclr_fused_step_over_two_plain",
        "sdclr_step_seconds",
        "two_plain_seconds",
    ):
        assert math.isfinite(r[key]) and r[key] > 0
    for name in ("simclr", "sdclr_p90", "sdclr_p90_fused"):
        assert r[name]["views_per_second"] > 0 and r[name]["fraction_of_ceiling"] > 0
    assert r["setup"]["device_type"] == "cpu" and r["setup"]["quick"] is True
    assert r["linear_probe"]["extrapolated"] is True
    assert r["augmentation"]["eager_views_per_second"] > 0  # compile is off on the CPU
    assert "compiled_views_per_second" not in r["augmentation"]
    ld = r["loading_224"]
    assert ld["suite_images_per_second"] > 0 and ld["dataloader_pil_images_per_second"] > 0
    assert "SDCLR fused step over two plain" in out.stdout and "fused branches" in out.stdout
    assert "SDCLR step over two plain" in out.stdout and str(out_json) in out.stdout
    assert "224 px loading" in out.stdout and "augmentation alone" in out.stdout
