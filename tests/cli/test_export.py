"""The ``sdclr-export`` console command (sdclr.cli.export): run as a user runs it, its printed
statements load the export in a fresh interpreter with plain timm (no sdclr import) and give
the suite's features; errors are one line and exit status 2; the old script's .pth export
still works."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from export_checkpoint import write_tiny_checkpoint

from sdclr.cli.export import legacy_main, main
from sdclr.models.checkpoint import load_encoder

REPO = Path(__file__).resolve().parents[2]


def console_script() -> str:
    beside = Path(sys.executable).parent / "sdclr-export"
    found = str(beside) if beside.is_file() else shutil.which("sdclr-export")
    assert found, "the sdclr-export console script is not installed (pip install -e .)"
    return found


def test_the_console_command_writes_what_plain_timm_loads(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "job" / "checkpoints" / "pretrain.pt")
    out = subprocess.run(
        [console_script(), "job/checkpoints/pretrain.pt", "--out", "backbone"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "backbone").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    lines = [s.strip() for s in out.stdout.split("load it with", 1)[1].splitlines()[1:]]
    assert lines[0] == "import timm, torch" and "local-dir:backbone" in lines[1]
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(0)).double()
    torch.save(x, tmp_path / "x.pt")
    user = "\n".join(
        [
            *lines,
            "x = torch.load('x.pt')",
            "with torch.no_grad():",
            "    torch.save(model.double().eval()(x), 'features.pt')",
            "import sys; assert not any(m.startswith('sdclr') for m in sys.modules)",
        ]
    )
    loaded = subprocess.run(
        [sys.executable, "-c", user], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert loaded.returncode == 0, loaded.stderr
    suite, _ = load_encoder(ckpt)
    with torch.no_grad():
        expected = suite.backbone.double().eval()(x)
    torch.testing.assert_close(
        torch.load(tmp_path / "features.pt"), expected, rtol=1e-12, atol=1e-12
    )


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    ckpt = str(write_tiny_checkpoint(tmp_path / "pretrain.pt"))
    assert main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "a")]) == 2
    assert "missing.pt not found" in one_line_error(capsys)
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert main([str(tmp_path / "notes.txt"), "--out", str(tmp_path / "a")]) == 2
    assert "is a text file" in one_line_error(capsys)
    assert main([ckpt, "--out", str(tmp_path / "notes.txt" / "sub")]) == 2
    assert "cannot write the export into" in one_line_error(capsys)
    assert not (tmp_path / "a").exists()
    out = str(tmp_path / "export")
    assert main([ckpt, "--out", out]) == 0
    capsys.readouterr()
    assert main([ckpt, "--out", out]) == 2
    assert "already holds an export" in one_line_error(capsys)
    assert main([ckpt, "--out", out, "--force"]) == 0


def test_the_old_script_and_format_pth_write_a_plain_state_dict(tmp_path, capsys):
    ckpt = str(write_tiny_checkpoint(tmp_path / "pretrain.pt"))
    pth = tmp_path / "bb.pth"
    assert legacy_main([ckpt, str(pth)]) == 0
    state = torch.load(pth)
    assert "layer1.0.bn1.running_mean" in state and "conv1.weight" in state
    assert (
        "channels=(8, 16, 32, 64)" in json.loads(pth.with_suffix(".pth.json").read_text())["load"]
    )
    capsys.readouterr()
    assert main([ckpt, "--out", str(pth), "--format", "pth"]) == 2
    assert "--force" in one_line_error(capsys)
    assert main([ckpt, "--out", str(pth), "--format", "pth", "--force"]) == 0
    script = subprocess.run(
        [sys.executable, "scripts/export_backbone.py", ckpt, str(tmp_path / "again.pth")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert script.returncode == 0, script.stderr
    assert torch.equal(torch.load(tmp_path / "again.pth")["conv1.weight"], state["conv1.weight"])
