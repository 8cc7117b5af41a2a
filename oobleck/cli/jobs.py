"""``oobleck jobs``: the jobs of a daemon master (id, state, age, agents, run dir, reason)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from oobleck.cli._common import new_parser, run_command
from oobleck.cli._daemon import add_daemon_flags, daemon_address, daemon_token
from oobleck.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``oobleck jobs``."""
    parser = new_parser(
        "jobs",
        description="List the jobs a daemon master has run and runs.",
        example="oobleck jobs --run-dir runs/daemon",
    )
    add_daemon_flags(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.job_table import format_jobs
    from oobleck.runtime.control.submission import request

    host, port = daemon_address(args)
    try:
        reply = request(host, port, daemon_token(args), {"type": "jobs"})
    except OSError as exc:
        raise ConfigError(f"cannot reach the master at {host}:{port} ({exc}); is it running?") from None
    sys.stdout.write(format_jobs(list(reply.get("jobs", []))))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck jobs``; 0 listed, 2 bad input or no master."""
    return run_command(build_parser(), _run, argv)
