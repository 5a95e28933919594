"""scripts/gpu_check.py, the plan a device call runs (issue 14), tested on the CPU: its dry run
on the real data (every step in order, the CUDA-only step skipped, the numbers measured, the
JSON and Markdown written), a budget too small for the later steps, and the runner itself
(a failing step is recorded and the next one runs; a hung command is stopped at the budget).
No GPU has run the plan when this test passes; it checks the plumbing only."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
STEPS = ["env", "cuda_tests", "speed", "accuracy", "files"]


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("gpu_check", None)


def _dry_run(tmp_path: Path, env: dict[str, str], budget: float, timeout: float = 400):
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--budget", str(budget)]
    cmd += ["--out", str(out), "--work", str(tmp_path / "work")]
    proc = subprocess.run(
        cmd, env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=timeout
    )
    record = json.loads((out / "gpu_check.json").read_text())
    return proc, record, (out / "gpu_check.md").read_text(), out


def _table_rows(md: str) -> list[list[str]]:
    """The step table's rows of gpu_check.md, as cells."""
    lines = md.splitlines()
    start = lines.index("| # | step | status | seconds | result / reason |") + 2
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_the_dry_run_runs_the_plan_and_writes_its_results(tmp_path, env):
    proc, record, md, out = _dry_run(tmp_path, env, budget=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = {s["name"]: s for s in record["steps"]}
    assert [s["name"] for s in record["steps"]] == STEPS and record["finished"] is True
    status = {n: s["status"] for n, s in steps.items()}
    assert status == dict(env="ok", cuda_tests="skipped", speed="ok", accuracy="ok", files="ok")
    assert "no CUDA device" in steps["cuda_tests"]["reason"]
    assert record["mode"].startswith("dry-run") and record["commit"]

    e = steps["env"]["results"]
    assert e["torch"] and e["timm"] and e["auto_device"] == "cpu" and e["errors"] == []
    speed = steps["speed"]["results"]
    for mode in ("default", "reduce_overhead"):
        b = speed[mode]
        for row in ("simclr", "sdclr_p90", "sdclr_p90_fused", "ceiling"):
            assert b[row]["views_per_second"] > 0 and b[row]["warmup_seconds"] > 0
            assert 0 <= b[row]["compile_seconds"] <= b[row]["warmup_seconds"]
        assert b["setup"]["channels"] == [8, 16, 32, 64] and "| measurement | value |" in b["table"]
    assert speed["reduce_overhead"]["setup"]["compile_mode"] == "reduce-overhead"
    d = speed["default"]
    assert d["sdclr_step_over_two_plain"] > 0 and d["linear_probe"]["seconds"] > 0
    assert d["augmentation"]["eager_views_per_second"] > 0 and d["peak_memory_mb"] > 0
    acc = steps["accuracy"]["results"]
    for name in ("simclr", "sdclr"):
        r = acc[name]
        assert r["status"] == "ok" and r["job_status"] == "completed" and r["epochs_reached"] == 1
        for probe in ("linear", "fewshot"):
            assert all(0 <= r[probe][k] <= 100 for k in ("acc", "many", "medium", "few"))
            assert r[probe]["std"] >= 0 and r[probe]["seconds"] > 0
        assert r["epoch_seconds"] > 0 and r["run"]["fraction"] == 0.01
    assert acc["sdclr"]["run"]["prune_ratio"] == 0.9 and acc["simclr"]["run"]["prune_ratio"] is None
    files = steps["files"]["results"]
    assert files["tree"]["images"] > 200 and files["folder"]["job_status"] == "completed"
    ld = files["loading_224"]
    assert ld["suite_images_per_second"] > 0 and ld["dataloader_pil_images_per_second"] > 0
    assert files["folder"]["linear"]["acc"] >= 0 and "no CUDA device" in files["nvjpeg"]

    rows = _table_rows(md)
    assert [r[1] for r in rows] == STEPS and [r[2] for r in rows] == list(status.values())
    assert "no CUDA device" in rows[1][4] and "## Accuracy" in md and "## Speed" in md
    # what a device call brings back: three files, no folders, small
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
    ]
    assert all(p.stat().st_size < 1 << 20 for p in out.iterdir())
    log = (out / "gpu_check.log").read_text()
    assert "### bench (exit 0" in log and "### accuracy-sdclr (exit 0" in log


def test_a_small_budget_skips_the_later_steps_and_says_why(tmp_path, env):
    proc, record, md, _ = _dry_run(tmp_path, env, budget=4, timeout=120)
    steps = {s["name"]: s for s in record["steps"]}
    assert [s["name"] for s in record["steps"]] == STEPS and record["finished"] is True
    # the env step starts; if it outlasts the 4 s it is stopped there, and says so
    assert steps["env"]["status"] in ("ok", "failed")
    if steps["env"]["status"] == "failed":
        assert "budget" in steps["env"]["error"] and proc.returncode == 1
    assert "no CUDA device" in steps["cuda_tests"]["reason"]
    for name in ("speed", "accuracy", "files"):
        assert steps[name]["status"] == "skipped", steps[name]
        assert (
            steps[name]["reason"].startswith("budget:")
            and "needs at least" in steps[name]["reason"]
        )
    rows = _table_rows(md)
    assert [r[2] for r in rows[2:]] == ["skipped"] * 3 and all("budget" in r[4] for r in rows[2:])


def test_a_failing_step_is_recorded_and_the_next_one_runs(tmp_path, gpu_check, monkeypatch):
    m = gpu_check

    def fails(check):
        raise m.StepFailed("boom", {"measured": 1})

    def breaks(check):
        raise ValueError("a bug in a step")

    def hangs(check):
        check.run("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])

    steps = [
        m.Step("a", "fails", fails, lambda c: 0.0),
        m.Step("b", "breaks", breaks, lambda c: 0.0),
        m.Step("c", "works", lambda c: {"x": 1}, lambda c: 0.0),
        m.Step("d", "injected", lambda c: {"x": 2}, lambda c: 0.0),
        m.Step("e", "hangs", hangs, lambda c: 0.0),
        m.Step("f", "too late", lambda c: {}, lambda c: 1.0),
    ]
    monkeypatch.setenv(m.FAIL_ENV, "d")
    check = m.Check(
        out=tmp_path / "out",
        work=tmp_path / "work",
        budget=3.0,
        dry=True,
        data=tmp_path,
        selected=set("abcdef"),
        record={"mode": "test", "budget_s": 3.0},
    )
    assert m.run_plan(check, steps) == 1
    r = {
        s["name"]: s for s in json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    }
    assert r["a"]["status"] == "failed" and r["a"]["error"] == "boom"
    assert r["a"]["results"] == {"measured": 1}
    assert r["b"]["status"] == "failed" and "ValueError: a bug in a step" in r["b"]["error"]
    assert r["c"]["status"] == "ok" and r["c"]["results"] == {"x": 1}
    assert r["d"]["status"] == "failed" and m.FAIL_ENV in r["d"]["error"]
    assert r["e"]["status"] == "failed" and "budget" in r["e"]["error"]
    assert r["e"]["seconds"] < 15  # stopped at the budget's end, not after its 60 s
    assert r["f"]["status"] == "skipped" and r["f"]["reason"].startswith("budget:")
    assert [row[2] for row in _table_rows((tmp_path / "out" / "gpu_check.md").read_text())] == [
        "failed",
        "failed",
        "ok",
        "failed",
        "failed",
        "skipped",
    ]
    assert "### sleeper (exit" in (tmp_path / "out" / "gpu_check.log").read_text()


def test_the_accuracy_epochs_follow_the_measured_epoch_time(gpu_check):
    plan = gpu_check.plan_epochs
    # near the 0.35 s target: 200 epochs of both, the 224-px step's time kept
    assert plan(400, 0.35, 0.45, fixed=60, reserve=75)[0] == 200
    # slower: 100 if it fits only without the reserve, else what fits
    assert plan(330, 0.9, 1.1, fixed=60, reserve=75)[0] == 100
    assert plan(200, 0.9, 1.1, fixed=60, reserve=75)[0] == 40
    n, why = plan(150, 2.0, 3.0, fixed=60, reserve=75)
    assert n == 0 and "fewer than" in why


def test_the_plan_commands_compose_and_validate(tmp_path, gpu_check):
    """The device runs these only on a GPU: they must stay valid as the schema evolves."""
    from sdclr.cli.bench import build_parser
    from sdclr.config.compose import compose_config
    from sdclr.config.validate import validate

    runs, benches = [], []
    for dry in (False, True):
        for step in STEPS:
            for cmd in gpu_check.commands(step, tmp_path, dry=dry):
                if cmd[1:3] == ["-m", "sdclr"]:
                    runs.append([a for a in cmd[3:] if not a.startswith("hydra.")])
                elif cmd[1:3] == ["-m", "sdclr.bench"]:
                    benches.append(build_parser().parse_args(cmd[3:]))
    assert len(runs) == 6 and len(benches) == 6
    for overrides in runs:
        validate(compose_config(overrides))
    assert sum(b.compile_mode == "reduce-overhead" for b in benches) == 2
    files, names = gpu_check.cuda_tests()
    assert {
        "test_cuda_matches_cpu_without_host_sync",
        "test_cuda_compiled_apply_matches_eager_without_host_sync",
        "test_nvjpeg_decoding_matches_the_cpu_decoder",
        "test_cuda_step_in_bf16_channels_last_compiled_is_sync_free_and_close_to_fp32",
    } <= set(names)
    assert all((SCRIPT.parents[1] / f).is_file() for f in files)


def test_the_device_command_fits_in_one_call():
    line = [
        x
        for x in (SCRIPT.parent / "gpu_check_device.sh").read_text().splitlines()
        if x.strip() and not x.startswith("#")
    ]
    assert len(line) == 1 and len(line[0]) < 2000
    assert "--budget 480" in line[0] and ".gpu/*.whl" in line[0]
    assert '--out "${OUT:-outputs}/gpu-check"' in line[0]  # $OUT: what comes back


def test_side_by_side_commands_each_get_their_outcome(tmp_path, gpu_check):
    """The dry run's independent toy commands run at once: each gets its own output or
    failure, a hung one is stopped at the budget, and the log holds every one."""
    m = gpu_check
    check = m.Check(
        out=tmp_path / "out", work=tmp_path / "work", budget=4.0, dry=True, data=tmp_path
    )
    check.out.mkdir(parents=True)
    py = sys.executable
    t0 = time.monotonic()
    ok, bad, hung = check.run_side_by_side(
        [
            ("ok", [py, "-c", "import os; print('threads', os.environ['OMP_NUM_THREADS'])"]),
            ("bad", [py, "-c", "raise SystemExit(3)"]),
            ("hung", [py, "-c", "import time; time.sleep(60)"]),
        ]
    )
    assert time.monotonic() - t0 < 15  # stopped at the budget, not after 60 s
    assert isinstance(ok, str) and "threads " in ok
    assert isinstance(bad, m.StepFailed) and "bad: exit 3" in str(bad)
    assert isinstance(hung, m.StepFailed) and "budget" in str(hung)
    log = (check.out / "gpu_check.log").read_text()
    assert all(f"### {label} (exit" in log for label in ("ok", "bad", "hung"))
