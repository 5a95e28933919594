"""Step 4, ``cuda_tests``: every test that skips itself on the CPU (found by its
``skipif(not torch.cuda.is_available())`` mark), with their outcomes."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gpucheck.check import Check, CommandArgs, StepFailed
from gpucheck.settings import PY, PYTEST_START_S, REPO


def cuda_tests() -> tuple[list[str], list[str]]:
    """The test files and names of the tests that skip themselves without CUDA (a
    ``skipif(not torch.cuda.is_available(), ...)`` on the test, or on the whole module)."""
    files, names = [], []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        text = path.read_text()
        if re.search(r"^pytestmark\s*=.*not torch\.cuda\.is_available\(\)", text, re.M):
            files.append(str(path.relative_to(REPO)))
            names.append(path.stem)
            continue
        found = re.findall(
            r"skipif\(\s*not torch\.cuda\.is_available\(\)[^\n]*\n(?:\s*@[^\n]*\n)*\s*def (\w+)",
            text,
        )
        if found:
            files.append(str(path.relative_to(REPO)))
            names += found
    return files, names


def cuda_tests_estimate(check: Check) -> float:
    """pytest's start and a compile for each CUDA test that compiles (its name says so: the
    augmentation's, the bf16 step's, the compiled step across a mask refresh)."""
    compiling = [n for n in cuda_tests()[1] if "compile" in n]
    return PYTEST_START_S + len(compiling) * check.costs.get("compile_s")


def step_cuda_tests(check: Check) -> dict[str, Any]:
    files, names = cuda_tests()
    if not names:
        raise StepFailed("no test skips itself without CUDA: nothing to run")
    results: dict[str, Any] = {"selected": names}

    def poll() -> None:  # the outcomes so far, from pytest -v's output
        output = Path(check.commands[-1]["path"]).read_text(errors="replace")
        check.publish("cuda_tests", {**results, **_pytest_outcomes(output)})

    try:
        cmd = cuda_tests_commands(check.command_args())[0]
        output = check.run("cuda_tests", cmd, on_poll=poll)
    except StepFailed as e:
        output = Path(check.commands[-1]["path"]).read_text(errors="replace")
        results.update(_pytest_outcomes(output))
        raise StepFailed(str(e), results) from None
    results.update(_pytest_outcomes(output))
    if results["outcomes"] and all(v == "SKIPPED" for v in results["outcomes"].values()):
        raise StepFailed("every CUDA test skipped itself: torch sees no GPU", results)
    return results


def _pytest_outcomes(output: str) -> dict[str, Any]:
    outcomes = dict(
        re.findall(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", output, re.M)
    )
    summary = re.findall(
        r"^=+ (.*(?:passed|failed|skipped|error|no tests ran).*) =+$", output, re.M
    )
    return {"outcomes": outcomes, "summary": summary[-1] if summary else None}


def cuda_tests_commands(args: CommandArgs) -> list[list[str]]:
    files, names = cuda_tests()
    pytest = [PY, "-m", "pytest", "-v", "-rs", "-p", "no:cacheprovider"]
    return [[*pytest, "--continue-on-collection-errors", *files, "-k", " or ".join(names)]]
