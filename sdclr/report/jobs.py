"""Read a sweep directory: find its job dirs, load each job's JSON files, read multirun.yaml.

A *job dir* is any directory under the sweep directory that holds ``.hydra/config.yaml``,
``metrics.json`` or ``status.json`` (the search does not descend into a job dir once found).
Each job is ``completed`` (usable for averaging), ``failed`` or ``incomplete``. When
``DIR/multirun.yaml`` exists, the expected job count is the product of the number of
comma-separated values of every sweep override, and override combinations without any job dir
are listed as missing.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sdclr.errors import SdclrError
from sdclr.utils.io import natural_key

#: Probe stages reported, in order, with their human-readable titles.
STAGES: tuple[tuple[str, str], ...] = (
    ("linear", "Full-shot (linear probe)"),
    ("fewshot", "Few-shot"),
)

#: The kNN classifier stage (``stage=knn``, ``metrics["knn"]``), reported in a table of its
#: own after the probes. Not the kNN *monitor*, whose points are ``metrics["pretrain"]["knn"]``.
KNN_STAGE: tuple[str, str] = ("knn", "kNN classifier")

#: Every evaluation stage whose results make a job's ``metrics.json`` a result.
EVAL_STAGES: tuple[tuple[str, str], ...] = (*STAGES, KNN_STAGE)

#: The 2-D map of the test features (``stage=embed``, ``metrics["embed"]``): no accuracy to
#: average, but a finished job's result all the same; the report links each job's picture.
EMBED_STAGE: tuple[str, str] = ("embed", "Map of the test features")

#: ``metrics.json`` key of a probe of the random-init encoder: ``linear_random_init`` etc.
#: (``stage.random_init=true``), the baseline a pretrained encoder has to beat.
RANDOM_INIT_SUFFIX = "_random_init"

MARKER_FILES = (Path(".hydra") / "config.yaml", Path("metrics.json"), Path("status.json"))


class ReportError(SdclrError):
    """The sweep directory cannot be reported on; the message says why and how to fix it."""


# --------------------------------------------------------------------------- reading


def as_float(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def _is_job_dir(path: Path) -> bool:
    return any((path / marker).is_file() for marker in MARKER_FILES)


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Job dirs under ``sweep_dir`` (itself included), in natural order (0, 1, ..., 10)."""
    sweep_dir = Path(sweep_dir)
    if _is_job_dir(sweep_dir):
        return [sweep_dir]
    found = []
    for root, dirs, _files in os.walk(sweep_dir):
        path = Path(root)
        if path != sweep_dir and _is_job_dir(path):
            found.append(path)
            dirs[:] = []  # do not descend into a job dir
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found, key=lambda p: natural_key(p.relative_to(sweep_dir).as_posix()))


def _read_json(path: Path) -> tuple[Any, str | None]:
    if not path.is_file():
        return None, None
    try:
        return json.loads(path.read_text()), None
    except (OSError, ValueError) as exc:
        return None, f"{path.name} unreadable: {exc}".splitlines()[0]


def _read_overrides(job_dir: Path) -> list[str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _override_key(key: str) -> str:
    return key.strip().lstrip("+~")


def overrides_dict(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        if "=" in item:
            key, value = item.split("=", 1)
            out[_override_key(key)] = value.strip()
    return out


def load_job(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """Read one job dir into ``{name, path, overrides, state, error, stage, metrics}``.

    ``state`` is ``completed`` (usable for averaging), ``failed`` or ``incomplete``.
    Fields relied on: ``status.json``: ``status``, ``error``, ``stage``; ``metrics.json``:
    ``run``, ``pretrain``, ``linear``, ``fewshot``, ``knn``, ``embed``.
    """
    rel = job_dir.relative_to(sweep_dir).as_posix()
    job: dict[str, Any] = {
        "name": rel,
        "path": str(job_dir),
        "overrides": _read_overrides(job_dir),
        "state": "incomplete",
        "error": None,
        "stage": None,
        "metrics": None,
    }
    metrics, metrics_err = _read_json(job_dir / "metrics.json")
    status, status_err = _read_json(job_dir / "status.json")
    if metrics is not None and not isinstance(metrics, dict):
        metrics, metrics_err = None, "metrics.json is not a JSON object"
    if status is not None and not isinstance(status, dict):
        status, status_err = None, "status.json is not a JSON object"
    job["metrics"] = metrics
    has_probe = isinstance(metrics, dict) and any(
        isinstance(metrics.get(s), dict) for s, _ in (*EVAL_STAGES, EMBED_STAGE)
    )
    declared = str(status.get("status")) if isinstance(status, dict) else None
    if isinstance(status, dict):
        job["stage"] = status.get("stage")
        if status.get("error"):
            job["error"] = str(status["error"]).splitlines()[0]

    if declared == "failed":
        job["state"] = "failed"
        job["error"] = job["error"] or "failed (no error message recorded)"
    elif declared == "running":
        job["state"] = "incomplete"
        job["error"] = job["error"] or "still running (or killed before it finished)"
    elif metrics_err or status_err:
        job["error"] = metrics_err or status_err
    elif metrics is None:
        job["error"] = "no metrics.json"
    elif not has_probe:
        job["error"] = "metrics.json has no linear, fewshot, knn or embed results" + (
            " (pretrain-only job)" if isinstance(metrics.get("pretrain"), dict) else ""
        )
    elif declared not in (None, "completed"):
        job["error"] = f"unknown status {declared!r} in status.json"
    else:
        job["state"] = "completed"
    return job


# --------------------------------------------------------------------------- sweep spec


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, parentheses, braces and quotes."""
    parts, depth, quote, buf = [], 0, "", []
    for ch in text:
        if quote:
            buf.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(buf).strip())
            buf = []
            continue
        buf.append(ch)
    parts.append("".join(buf).strip())
    return parts


def _sweep_values(value: str) -> list[str] | None:
    """The values a Hydra sweep override expands to, or None when it cannot be expanded."""
    value = value.strip()
    fn = re.fullmatch(r"(\w+)\((.*)\)", value, flags=re.S)
    if fn:
        name, inner = fn.group(1), fn.group(2)
        if name in ("choice", "sort", "shuffle"):
            inner_args = [a for a in _split_top_level(inner) if not a.startswith("reverse=")]
            vals: list[str] = []
            for arg in inner_args:
                sub = _sweep_values(arg)
                if sub is None:
                    return None
                vals.extend(sub)
            return vals
        if name == "range":
            try:
                args = [int(a.split("=")[-1]) for a in _split_top_level(inner)]
                return [str(x) for x in range(*args)]
            except (TypeError, ValueError):
                return None
        if name in ("interval", "glob", "tag"):
            return None
    return _split_top_level(value)


def read_sweep_spec(sweep_dir: Path) -> tuple[dict[str, list[str]] | None, list[str]]:
    """Sweep overrides from ``multirun.yaml`` as ``{key: [values]}`` plus warnings.

    Returns ``(None, warnings)`` when there is no ``multirun.yaml`` or it cannot be expanded.
    Reads ``hydra.overrides.task`` and ``hydra.sweeper.params`` (the former wins).
    """
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return None, []
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        return None, [
            f"multirun.yaml unreadable ({str(exc).splitlines()[0]}); expected job count unknown"
        ]
    hydra_cfg = data.get("hydra") if isinstance(data, dict) else None
    hydra_cfg = hydra_cfg if isinstance(hydra_cfg, dict) else {}
    raw: dict[str, str] = {}
    params = (
        (hydra_cfg.get("sweeper") or {}).get("params")
        if isinstance(hydra_cfg.get("sweeper"), dict)
        else None
    )
    if isinstance(params, dict):
        for key, value in params.items():
            raw[_override_key(str(key))] = str(value)
    task = (
        (hydra_cfg.get("overrides") or {}).get("task")
        if isinstance(hydra_cfg.get("overrides"), dict)
        else None
    )
    for item in task or []:
        item = str(item)
        if "=" not in item:
            continue
        key, value = item.split("=", 1)
        raw[_override_key(key)] = value
    spec: dict[str, list[str]] = {}
    for key, value in raw.items():
        values = _sweep_values(value)
        if values is None:
            return None, [f"cannot expand sweep override {key}={value}; expected job count unknown"]
        spec[key] = values
    return spec, []


def missing_combinations(
    spec: Mapping[str, Sequence[str]], jobs: Sequence[Mapping[str, Any]]
) -> list[list[str]]:
    """Override combinations of the sweep that no job dir's overrides match (values compared
    as Hydra reads them: a job's ``smoke=True`` is the command line's ``smoke=true``)."""
    keys = list(spec)
    have = [
        {k: _override_value(k, v) for k, v in overrides_dict(job["overrides"]).items()}
        for job in jobs
    ]
    missing = []
    for combo in itertools.product(*(spec[k] for k in keys)):
        want = dict(zip(keys, combo))
        if not any(
            all(h.get(k, _ABSENT) == _override_value(k, v) for k, v in want.items()) for h in have
        ):
            missing.append([f"{k}={v}" for k, v in want.items()])
    return missing


_ABSENT = object()


@functools.lru_cache(maxsize=4096)
def _override_value(key: str, value: str) -> Any:
    """``key=value``'s value as Hydra's override grammar reads it (bools, numbers, lists,
    quoted strings; Hydra writes a job's overrides back in its own spelling), else the text."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except Exception:  # no Hydra, or not a plain value: compare the text
        return value.strip()
    return repr(parsed)  # hashable and exact: 1 and 1.0 and True stay apart
