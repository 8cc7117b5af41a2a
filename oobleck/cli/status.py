"""``oobleck status RUN_DIR | --master HOST:PORT``: a job's nodes, current plan, progress, step rate and
last recoveries, from its run dir or live from its master (over the authenticated control channel)."""

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
        description="Show a job's nodes, the pipelines and stages of its current plan, step rate and last "
        "recoveries: from its run dir (a live job's or a finished one's; a daemon's shows its newest job), "
        "or live from its master with --master HOST:PORT.",
        example="oobleck status runs/demo\n"
        "  oobleck status --master 127.0.0.1:29400 --token-file runs/demo/token",
    )
    parser.add_argument("run_dir", nargs="?", help="run dir of a master, a daemon, or one of its jobs/<id>/")
    parser.add_argument(
        "--master", metavar="HOST:PORT", help="ask the running master instead of reading files"
    )
    parser.add_argument(
        "--token-file",
        help="with --master: 0600 token file (default: RUN_DIR/token when RUN_DIR is given, "
        "else $OOBLECK_TOKEN)",
    )
    return parser


def _live(args: argparse.Namespace) -> str:
    from oobleck.cli._daemon import daemon_token
    from oobleck.runtime.control.status_service import fetch_status
    from oobleck.runtime.control.status_view import render

    host, sep, port = str(args.master).rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--master {args.master!r}: expected HOST:PORT, e.g. 127.0.0.1:29400")
    return render(fetch_status(host, int(port), daemon_token(args)))


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.run_status import status_text

    if args.master:
        sys.stdout.write(_live(args))
        return 0
    if not args.run_dir:
        raise ConfigError("give a RUN_DIR or --master HOST:PORT")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run directory")
    sys.stdout.write(status_text(run_dir))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck status``; 0 shown, 2 no such run dir, no master there, or a wrong token."""
    return run_command(build_parser(), _run, argv)
