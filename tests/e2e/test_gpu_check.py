"""scripts/gpu_check.py, the plan a device call runs (issues 14 and 23), tested on the CPU: its
dry run on the real data (every step in the plan's order, the CUDA-only step skipped, the
numbers measured, the JSON and Markdown written, the planner's costs measured), a budget too
small for the later steps, the runner itself (a failing step is recorded and the next one runs;
a hung command is stopped at the budget), the planner on given costs, and a bench killed part
way (its finished rows are in gpu_check.json). No GPU has run the plan when this test passes;
it checks the plumbing only."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.py"
STEPS = [
    "env",
    "default_run",
    "speed_eager",
    "cuda_tests",
    "speed_compiled",
    "accuracy",
    "speed_reduce_overhead",
    "files",
]
SPEED_STEPS = ("speed_eager", "speed_compiled", "speed_reduce_overhead")


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
    assert record["order"] == STEPS and record["margin_s"] == 60
    status = {n: s["status"] for n, s in steps.items()}
    assert status == {n: "skipped" if n == "cuda_tests" else "ok" for n in STEPS}
    assert "no CUDA device" in steps["cuda_tests"]["reason"]
    assert record["mode"].startswith("dry-run") and record["commit"]
    # the steps ran one after another, in the plan's order
    starts = [steps[n]["started_s"] for n in STEPS if n != "cuda_tests"]
    assert starts == sorted(starts)

    e = steps["env"]["results"]
    assert e["torch"] and e["timm"] and e["auto_device"] == "cpu" and e["errors"] == []
    d = steps["default_run"]["results"]
    # what ran, from metrics.json: on the CPU the defaults are float32, no compile
    assert d["ran"] == {
        "precision": "fp32",
        "compile": False,
        "channels_last": False,
        "compile_mode": None,
        "fuse_branches": False,
    }
    assert d["job_status"] == "completed" and d["epochs_reached"] == 2
    assert d["run"]["prune_ratio"] == 0.9 and d["run"]["fraction"] == 0.01
    assert len(d["epoch_train_seconds"]) == 2 and d["steady_epoch_seconds"] > 0
    assert d["compile_train_seconds"] >= 0 and d["first_epoch_extra_seconds"] >= 0
    assert d["run_start_seconds"] > 0 and d["linear"]["seconds"] > 0
    # the planner's costs: measured on this machine, by the commands that could
    costs = record["costs"]
    assert costs["compile_s"]["measured_by"] == "default_run"
    assert costs["run_start_s"]["measured_by"] == "default_run"
    assert costs["bench_start_s"]["measured_s"] > 0 and costs["row_s"]["measured_s"] > 0
    assert steps["default_run"]["estimate_s"] == pytest.approx(45 + 120 + 30)  # worst cases

    eager = steps["speed_eager"]["results"]
    assert eager["planned"] == ["simclr", "sdclr_p90", "ceiling", "probe"]
    compiled = steps["speed_compiled"]["results"]
    assert compiled["planned"] == [
        "simclr",
        "sdclr_p90",
        "ceiling",
        "sdclr_p90_fused",
        "augmentation",
        "step_ratio",
    ]
    for name in SPEED_STEPS:
        r = steps[name]["results"]
        b = r["bench"]
        assert b["finished"] is True and b["rows_done"] == r["planned"] and not r["not_planned"]
        for row in ("simclr", "sdclr_p90", "ceiling"):
            assert b[row]["views_per_second"] > 0 and b[row]["warmup_seconds"] > 0
            assert 0 <= b[row]["compile_seconds"] <= b[row]["warmup_seconds"]
            assert b["row_seconds"][row] > 0
        assert b["setup"]["channels"] == [8, 16, 32, 64] and "| measurement | value |" in b["table"]
        assert b["setup"]["compile"] is False  # the CPU's default: nothing compiles in the dry run
    assert steps["speed_eager"]["results"]["bench"]["linear_probe"]["seconds"] > 0
    assert "sdclr_p90_fused" not in steps["speed_eager"]["results"]["bench"]
    c = compiled["bench"]
    assert c["sdclr_step_over_two_plain"] > 0 and c["augmentation"]["eager_views_per_second"] > 0
    ro = steps["speed_reduce_overhead"]["results"]["bench"]
    assert ro["setup"]["compile_mode"] == "reduce-overhead" and "sdclr_p90_fused" in ro
    acc = steps["accuracy"]["results"]
    for name in ("simclr", "sdclr"):
        r = acc[name]
        assert r["status"] == "ok" and r["job_status"] == "completed" and r["epochs_reached"] == 1
        for probe in ("linear", "fewshot"):
            assert all(0 <= r[probe][k] <= 100 for k in ("acc", "many", "medium", "few"))
            assert r[probe]["std"] >= 0 and r[probe]["seconds"] > 0
        assert r["epoch_seconds"] > 0 and r["run"]["fraction"] == 0.01
    assert acc["sdclr"]["run"]["prune_ratio"] == 0.9 and acc["simclr"]["run"]["prune_ratio"] is None
    assert acc["estimates"]["measured"] is True  # planned from this run's measurements
    assert acc["estimates"]["sources"]["probes"] == "default_run"
    files = steps["files"]["results"]
    assert files["tree"]["images"] > 200 and files["folder"]["job_status"] == "completed"
    ld = files["loading_224"]
    assert ld["suite_images_per_second"] > 0 and ld["dataloader_pil_images_per_second"] > 0
    assert files["folder"]["linear"]["acc"] >= 0 and "no CUDA device" in files["nvjpeg"]

    rows = _table_rows(md)
    assert [r[1] for r in rows] == STEPS and [r[2] for r in rows] == list(status.values())
    assert "no CUDA device" in rows[3][4] and "ran: precision fp32" in rows[1][4]
    assert "## Accuracy" in md and "## Speed (eager)" in md and "Planner costs" in md
    assert (
        "## Speed (compiled, default mode)" in md and "## Speed (compiled, reduce-overhead)" in md
    )
    # what a device call brings back: three files, no folders, small
    assert sorted(p.name for p in out.iterdir()) == [
        "gpu_check.json",
        "gpu_check.log",
        "gpu_check.md",
    ]
    assert all(p.stat().st_size < 1 << 20 for p in out.iterdir())
    log = (out / "gpu_check.log").read_text()
    assert "### default-run (exit 0" in log and "### bench-eager (exit 0" in log
    assert "### bench-compiled (exit 0" in log and "### accuracy-sdclr (exit 0" in log


def test_a_small_budget_skips_the_later_steps_and_says_why(tmp_path, env):
    proc, record, md, _ = _dry_run(tmp_path, env, budget=4, timeout=120)
    steps = {s["name"]: s for s in record["steps"]}
    assert [s["name"] for s in record["steps"]] == STEPS and record["finished"] is True
    # the env step starts; if it outlasts the 4 s it is stopped there, and says so
    assert steps["env"]["status"] in ("ok", "failed")
    if steps["env"]["status"] == "failed":
        assert "budget" in steps["env"]["error"] and proc.returncode == 1
    assert "no CUDA device" in steps["cuda_tests"]["reason"]
    later = [n for n in STEPS[1:] if n != "cuda_tests"]
    for name in later:
        assert steps[name]["status"] == "skipped", steps[name]
        reason = steps[name]["reason"]
        assert reason.startswith("budget:") and "needs at least" in reason
        assert "assumed" in reason  # nothing measured yet: the worst cases
    rows = _table_rows(md)
    skipped = [r for r in rows if r[1] in later]
    assert [r[2] for r in skipped] == ["skipped"] * len(later)
    assert all("budget" in r[4] for r in skipped)


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

    runs, benches = [], {}
    for dry in (False, True):
        for step in STEPS:
            for cmd in gpu_check.commands(step, tmp_path, dry=dry):
                if cmd[1:3] == ["-m", "sdclr"]:
                    runs.append([a for a in cmd[3:] if not a.startswith("hydra.")])
                elif cmd[1:3] == ["-m", "sdclr.bench"]:
                    benches[(step, dry)] = build_parser().parse_args(cmd[3:])
    assert len(runs) == 8 and len(benches) == 8
    for overrides in runs:
        validate(compose_config(overrides))
    # the default run: the runner's defaults but the size, on the GPU 2 epochs at 20%
    (gpu_default,) = gpu_check.commands("default_run", tmp_path)
    assert "data.fraction=0.2" in gpu_default and "pretrain.epochs=2" in gpu_default
    assert "stage=all" in gpu_default
    numerics = ("precision=", "compile=", "channels_last=", "compile_mode=", "fuse_branches=")
    assert not [a for a in gpu_default if a.startswith(numerics)]
    assert not any(a.startswith(("device=", "prune=")) for a in gpu_default)
    for dry in (False, True):
        eager, compiled = benches[("speed_eager", dry)], benches[("speed_compiled", dry)]
        assert eager.no_compile and eager.methods == "simclr,sdclr_p90,ceiling"
        assert eager.rows == "methods,probe"
        assert not compiled.no_compile and compiled.compile_mode is None
        assert compiled.rows == "methods,augmentation,step_ratio"
        assert benches[("speed_reduce_overhead", dry)].compile_mode == "reduce-overhead"
        assert benches[("files", dry)].rows == "loading_224"
    # a chosen prefix of a speed step's rows
    (cmd,) = gpu_check.commands("speed_compiled", tmp_path, rows=["simclr", "sdclr_p90"])
    args = build_parser().parse_args(cmd[3:])
    assert args.rows == "methods" and args.methods == "simclr,sdclr_p90"
    files, names = gpu_check.cuda_tests()
    assert {
        "test_cuda_matches_cpu_without_host_sync",
        "test_cuda_compiled_apply_matches_eager_without_host_sync",
        "test_nvjpeg_decoding_matches_the_cpu_decoder",
        "test_cuda_step_in_bf16_channels_last_compiled_is_sync_free_and_close_to_fp32",
    } <= set(names)
    assert all((SCRIPT.parents[1] / f).is_file() for f in files)


def test_the_planner_assumes_the_worst_until_it_measured(tmp_path, gpu_check):
    """Before a compile was measured every compiled row costs COMPILE_WORST_S; once one was,
    the plan uses it (x SAFETY), and a speed step runs the rows that fit, in value order."""
    m = gpu_check
    check = m.Check(out=tmp_path, work=tmp_path, budget=480.0, dry=False, data=tmp_path)
    c = check.costs
    assert c.get("compile_s") == m.COMPILE_WORST_S == 120.0
    assert m.default_run_estimate(check) == m.START_WORST_S + m.COMPILE_WORST_S + 30.0
    # worst cases: 45 s start, then (120 + 30) s a compiled row: 2 of them fit in 480 s
    rows, total, dropped = m.plan_rows(check, "speed_compiled")
    assert rows == ["simclr", "sdclr_p90"] and total == 45 + 2 * 150
    assert list(dropped) == ["ceiling", "sdclr_p90_fused", "augmentation", "step_ratio"]
    assert all(r.startswith("budget:") and "assumed" in r for r in dropped.values())
    # measured (planned x 1.25): 30 s of compile, 8 s a row, 12 s a start: all 8 graph sets
    c.measure("compile_s", 30.0, "default_run")
    c.measure("row_s", 8.0, "speed_eager")
    c.measure("bench_start_s", 12.0, "speed_eager")
    rows, total, dropped = m.plan_rows(check, "speed_compiled")
    assert rows == [name for name, _ in m.COMPILED_ROWS] and not dropped
    assert total == pytest.approx(1.25 * (12 + 8 * 38))
    assert check.costs.record()["compile_s"] == {
        "measured_s": 30.0,
        "plan_s": 37.5,
        "measured_by": "default_run",
    }
    # the eager rows compile nothing
    assert m.row_cost(check, 1, compiled=False) == pytest.approx(10.0)
    # a speed step whose first row does not fit is skipped by the runner, with the reason
    check.start -= 470
    assert m.speed_estimate("speed_compiled")(check) > check.left()


def test_the_compile_is_timed_apart_from_the_epochs():
    """The default run's metrics.jsonl: each epoch's training is its record's time less the
    record before it (kNN, diagnostics), the step records skipped; the compile is the first
    epoch's training beyond the steady one."""
    spec = importlib.util.spec_from_file_location("gpu_check_timing", SCRIPT)
    m = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check_timing"] = m
    try:
        spec.loader.exec_module(m)
        records = [
            {"kind": "knn", "time": 100.0, "epoch": 0},
            {"kind": "pretrain", "time": 150.0, "step": 20, "epoch": 1, "loss": 5.0},
            {"kind": "pretrain", "time": 170.0, "epoch": 1, "epoch_loss": 5.0},
            {"kind": "diagnostics", "time": 185.0, "epoch": 1},
            {"kind": "pretrain", "time": 195.0, "epoch": 2, "epoch_loss": 4.0},
            {"kind": "diagnostics", "time": 197.0, "epoch": 2},
            {"kind": "linear", "time": 230.0, "epoch": 1},
        ]
        t = m.epoch_timing(records)
    finally:
        sys.modules.pop("gpu_check_timing", None)
    assert t["epoch_train_seconds"] == [70.0, 10.0]
    assert t["steady_epoch_seconds"] == 10.0 and t["compile_train_seconds"] == 60.0


def test_a_bench_killed_part_way_leaves_its_rows_in_gpu_check_json(
    tmp_path, gpu_check, env, monkeypatch
):
    """The eager speed step's bench is killed (SIGTERM, as at a time limit) once its first
    row is in: the step fails, with the rows the bench finished, and gpu_check.json holds
    them the moment the command ended (before the step returned)."""
    m = gpu_check
    for key in ("SDCLR_DATA", "SDCLR_CACHE"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    check = m.Check(
        out=tmp_path / "out",
        work=tmp_path / "work",
        budget=300.0,
        dry=True,
        data=Path(env["SDCLR_DATA"]),
        record={
            "mode": "test",
            "steps": [{"name": "speed_eager", "title": "", "status": "running"}],
        },
    )
    bench_json = tmp_path / "work" / "bench" / "bench-eager.json"
    killed = []

    def kill_after_the_first_row() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            running = check.commands and check.commands[-1]["rc"] is None
            if running and bench_json.is_file():
                os.killpg(check.commands[-1]["pid"], signal.SIGTERM)
                killed.append(json.loads(bench_json.read_text())["rows_done"])
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_after_the_first_row)
    killer.start()
    try:
        with pytest.raises(m.StepFailed) as failed:
            m.step_speed(check, "speed_eager")
    finally:
        killer.join()
    assert killed and killed[0][0] == "simclr"
    assert "exit -15" in str(failed.value) and "rows finished: simclr" in str(failed.value)
    bench = failed.value.results["bench"]
    assert bench["finished"] is False and bench["rows_done"][0] == "simclr"
    assert "probe" not in bench["rows_done"] and bench["simclr"]["views_per_second"] > 0
    assert "PARTIAL" in bench["table"] and "| SimCLR: views/s |" in bench["table"]
    # published when the command ended: the file already has the rows
    saved = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    step = saved["steps"][0]["results"]
    assert step["bench"]["rows_done"] == bench["rows_done"] and step["planned"][0] == "simclr"
    assert "PARTIAL: rows finished simclr" in (tmp_path / "out" / "gpu_check.md").read_text()
    assert "### bench-eager (exit -15" in (tmp_path / "out" / "gpu_check.log").read_text()
    # the planner learnt nothing from an unfinished bench's start, but an eager row's time
    assert check.costs.bench_start_s is None and check.costs.row_s > 0


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
