"""``python -m sdclr.report DIR``: aggregate a Hydra multirun sweep into a markdown report,
a JSON summary and plots.

Usage::

    python -m sdclr.report outputs/multirun/2026-11-22/10-00-00 [--out DIR2]

The report is printed and written to ``DIR`` (or ``--out``), see :mod:`sdclr.report.build`;
exit code 2, with the reason on stderr, when the directory cannot be reported on.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sdclr.report.build import build_report, log_to_wandb
from sdclr.report.jobs import ReportError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdclr.report",
        description="Aggregate a Hydra multirun sweep into report.md, report.json and plots.",
    )
    parser.add_argument("sweep_dir", type=Path, help="Hydra multirun directory of the sweep")
    parser.add_argument(
        "--out", type=Path, default=None, help="where to write the report (default: sweep_dir)"
    )
    parser.add_argument(
        "--wandb",
        action="store_true",
        help="also log the tables (as wandb.Table) and plots to W&B, in the sweep's group",
    )
    parser.add_argument("--wandb-project", default="sdclr", help="W&B project (default sdclr)")
    args = parser.parse_args(argv)
    try:
        markdown = build_report(args.sweep_dir, args.out)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.wandb:
        log_to_wandb(args.sweep_dir, args.out or args.sweep_dir, args.wandb_project)
    try:
        sys.stdout.write(markdown)
    except UnicodeEncodeError:  # e.g. an ASCII-only locale: keep the report, lose the ±
        sys.stdout.flush()
        enc = sys.stdout.encoding or "ascii"
        sys.stdout.buffer.write(markdown.encode(enc, errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
