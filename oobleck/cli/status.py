"""``oobleck status RUN_DIR``: a run's nodes, current plan, progress, step rate and last recoveries."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from oobleck.cli._common import new_parser, run_command
from oobleck.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck status``."""
    parser = new_parser(
        "status",
        description="Show a run's nodes, pipelines and stages of its current plan, step rate and last "
        "recoveries, from its run dir (a live job's or a finished one's; a daemon's shows its newest job).",
        example="oobleck status runs/demo",
    )
    parser.add_argument("run_dir", help="run dir of a master, a daemon, or one of its jobs/<id>/")
    return parser


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.run_status import status_text

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    sys.stdout.write(status_text(run_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck status``; 0 shown, 2 no such run dir."""
    return run_command(build_parser(), _run, argv)
