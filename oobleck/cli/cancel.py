"""``oobleck cancel JOB``: fail a running job of a daemon master (its agents are shut down)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oobleck.cli._common import new_parser, run_command
from oobleck.cli._daemon import add_daemon_flags, daemon_address, daemon_token
from oobleck.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck cancel``."""
    parser = new_parser(
        "cancel",
        description="Cancel a running job of a daemon master; the daemon stays up for the next job.",
        example="oobleck cancel --run-dir runs/daemon job2",
    )
    parser.add_argument("job", help="job id, as `oobleck submit` and `oobleck jobs` print it")
    add_daemon_flags(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.submission import request

    host, port = daemon_address(args)
    try:
        reply = request(host, port, daemon_token(args), {"type": "cancel", "job": args.job})
    except OSError as exc:
        raise ConfigError(f"cannot reach the master at {host}:{port} ({exc}); is it running?") from None
    if reply["type"] != "cancelled":
        raise ConfigError(f"cancel {args.job}: {reply.get('message')}")
    sys.stdout.write(f"{args.job} cancelled\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck cancel``; 0 cancelled, 2 no such running job or no master."""
    return run_command(build_parser(), _run, argv)
