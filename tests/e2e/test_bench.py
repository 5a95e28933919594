"""`make bench-quick`: the benchmark runs on CPU and writes its JSON (no timing asserted)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time


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


def test_a_bench_stopped_part_way_leaves_the_rows_it_finished(tmp_path, env):
    """The JSON and the table are rewritten after every row: SIGTERM once the first row is
    in, and the files hold that row (and nothing half-written), marked unfinished."""
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    cmd = [sys.executable, "-m", "sdclr.bench", "--quick", "--channels", "8,16,32,64"]
    # the 224-px row after SimCLR takes seconds (JPEGs written, loader workers started)
    cmd += ["--rows", "methods,loading_224", "--methods", "simclr", "--out", str(out_json)]
    proc = subprocess.Popen(
        [*cmd, "--table", str(out_md)],
        env=dict(env, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 300
        while not out_json.is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert out_json.is_file(), proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGTERM  # stopped, not finished
    r = json.loads(out_json.read_text())
    assert r["finished"] is False and r["rows_done"] == ["simclr"] and "loading_224" not in r
    assert r["simclr"]["views_per_second"] > 0 and r["row_seconds"]["simclr"] > 0
    assert r["setup"]["methods"] == ["simclr"] and r["setup"]["rows"] == ["methods", "loading_224"]
    md = out_md.read_text()
    assert "| SimCLR: views/s |" in md and "PARTIAL: 1 of 2 rows" in md
