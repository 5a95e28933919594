"""Bad input that Hydra meets before the runner's own code: one ``error:`` line, exit 2.

* An override Hydra cannot compose (an unknown group option such as ``split=split9``, an
  unknown key such as ``pretrain.foo=1``, a value of the wrong type such as
  ``pretrain.epochs=abc``, an override it cannot parse): Hydra prints several lines and exits
  with status 1. :func:`config_errors_reported` turns these into one line naming the key or
  option and what it accepts. ``HYDRA_FULL_ERROR=1`` leaves Hydra's own report (the full
  traceback) as it was; ``debug=true`` prints the traceback before the line.
* An output directory that cannot be created (``hydra.run.dir=/proc/x``): Hydra creates it
  before the job starts and fails with a traceback. :class:`OutputDirCheck`, a Hydra callback
  (``hydra.callbacks.output_dir`` in ``conf/config.yaml``), creates it first, once the config
  (and so the directory, whatever sets it) is resolved, and stops with one line when it
  cannot; for a multirun the sweep directory likewise.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

_TRUE = ("true", "yes", "on", "1")


@contextmanager
def config_errors_reported(argv: list[str]) -> Iterator[None]:
    """While Hydra runs (``hydra.main``'s entry), report a composition error as one
    ``error:`` line and exit 2 (see the module docstring).

    Hydra has no hook for these: it reports them itself, in ``run_and_report`` (private to
    ``hydra._internal.utils``, which ``_run_hydra`` calls around composing and running), and
    exits 1. That function is wrapped for the duration, so that only a composition or parse
    error changes; everything else reaches Hydra's own report as before, and a Hydra without
    that function is left alone."""
    import hydra._internal.utils as hydra_utils  # Hydra reports through this, in _run_hydra

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
        yield
        return
    debug = any(_is_debug(a) for a in argv)

    def run_and_report(func: Any) -> Any:
        def composed() -> Any:
            try:
                return func()
            except (ConfigCompositionException, OverrideParseException) as e:
                if debug:
                    traceback.print_exc()
                print(f"error: {describe(e)}", file=sys.stderr, flush=True)
                sys.exit(2)

        return original(composed)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def _is_debug(arg: str) -> bool:
    key, _, value = arg.partition("=")
    return key.lstrip("+") == "debug" and value.strip("'\"").lower() in _TRUE


def describe(e: Exception) -> str:
    """One line naming what Hydra could not compose and what it accepts."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        if group and e.options:
            return (
                f"{group}={option}: there is no such {group} option; choose one of "
                f"{', '.join(e.options)}"
            )
        return _one_line(e)
    if isinstance(e, OverrideParseException):
        detail = [
            line
            for line in str(e.message).splitlines()
            if line.strip() and not line.startswith(("See ", "Error parsing override"))
        ]
        return (
            f"cannot read the override {e.override!r} ({'; '.join(detail) or 'syntax error'}); "
            f"write key=value (lists as key=[a,b], a sweep's values as key=a,b with -m)"
        )
    cause = e.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        return _unknown_key(cause)
    if isinstance(cause, ValidationError) and cause.full_key:
        return _wrong_value(cause)
    return _one_line(e) + (f" ({_first_line(cause)})" if cause is not None else "")


def _unknown_key(cause: ConfigAttributeError | ConfigKeyError) -> str:
    key, full = str(cause.key), str(cause.full_key)
    section = full.rpartition(".")[0]
    parent = cause.parent_node
    keys = [str(k) for k in parent.keys() if k != "hydra"] if parent is not None else []
    where = f"{section} has" if section else "the config has"
    line = f"{full}: {where} no key {key!r}"
    close = difflib.get_close_matches(key, keys, n=1)
    if close:
        line += f" (did you mean {f'{section}.' if section else ''}{close[0]}?)"
    if keys:
        line += f"; its {'keys' if section else 'top-level keys'} are {', '.join(keys)}"
    return line


# what a node of each kind accepts, from OmegaConf's message when the node is not at hand
_TAKES = [
    (r"converted to Integer", "an integer"),
    (r"converted to Float", "a number"),
    (r"not a valid bool", "true or false"),
    (r"is not a ListConfig, list or tuple", "a list, e.g. [1,2]"),
    (r"is not a DictConfig, dict", "a mapping, e.g. {a:1}"),
    (r"is not a subclass of", "its keys, one by one (e.g. KEY.name=value)"),
]


def _wrong_value(cause: ValidationError) -> str:
    full, value = str(cause.full_key), cause.value
    message = _first_line(cause)
    takes = next((t for pattern, t in _TAKES if re.search(pattern, message)), None)
    node = _node(cause)
    if isinstance(node, DictConfig):
        takes = f"its keys, one by one (e.g. {full}.{next(iter(node.keys()), 'KEY')}=...)"
    elif isinstance(node, ListConfig):
        takes = "a list, e.g. [1,2]"
    if takes is None:
        return f"{full}={value}: {message}"
    optional = " (or null)" if node is not None and node._is_optional() else ""
    return f"{full}={value}: {full} takes {takes}{optional}, not {value!r}"


def _node(cause: ValidationError) -> Any:
    parent = cause.parent_node
    try:
        return parent._get_node(cause.key) if parent is not None else None
    except Exception:  # the node is only a nicety for the message
        return None


def _first_line(e: BaseException) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _one_line(e: BaseException) -> str:
    text = str(e).split("\nConfig search path:")[0].replace("\\'", "'")
    return " ".join(text.split())


# --- the output directory -------------------------------------------------------------------


class OutputDirCheck(Callback):
    """Create the run's (or the sweep's) directory before Hydra does, stopping with one
    ``error:`` line when it cannot be created or written."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_output_dir(Path(str(config.hydra.run.dir)), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        make_output_dir(Path(str(config.hydra.sweep.dir)), "hydra.sweep.dir")


def make_output_dir(path: Path, key: str) -> None:
    """``path`` created (as Hydra would) and writable, or one ``error:`` line and exit 2."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        print(
            f"error: {output_dir_problem(path, e)}; choose another with {key}=PATH", file=sys.stderr
        )
        sys.exit(2)


def output_dir_problem(path: Path, e: OSError) -> str:
    """Why ``path`` cannot be the output directory, naming the part of it in the way."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"cannot create the output directory {path}: {existing} is not a directory"
    failed = f"{e.filename}: " if e.filename else ""
    return (
        f"cannot create the output directory {path}: {existing} is not writable "
        f"({failed}{e.strerror or e})"
    )
