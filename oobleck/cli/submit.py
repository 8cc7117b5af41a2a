"""``oobleck submit`` / ``python -m oobleck.runtime.submit``: hand a job to a running daemon master.

Prints the job id and its run dir (``<daemon run dir>/jobs/<id>/``); with ``--wait`` it streams the
job's progress lines and recovery summaries until the job ends, and exits 0 only if it completed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from oobleck.cli._common import at_least, new_parser, run_command
from oobleck.cli._daemon import add_daemon_flags, daemon_address, daemon_token
from oobleck.errors import ConfigError

logger = logging.getLogger(__name__)

EXIT_FAILED = 1

DEFAULT_TIMEOUT_S = 24 * 3600.0
"""Same as ``control.job_table.DEFAULT_JOB_TIMEOUT_S`` (not imported: --help stays import-free)."""


def build_parser() -> argparse.ArgumentParser:
    """The submitter's flags."""
    parser = new_parser(
        "submit",
        description="Submit a training job to a master started without --config (daemon mode).",
        example="oobleck submit --run-dir runs/daemon --config examples/tiny_gpt2.yaml "
        "--hostfile examples/hosts.local4 --wait",
    )
    parser.add_argument("--config", required=True, help="job YAML")
    add_daemon_flags(parser)
    parser.add_argument("--hostfile", help="agents for the master to launch, one per line")
    parser.add_argument(
        "--nodes", type=int, default=0, help="without --hostfile: hand-started agents to wait for"
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="the master fails the job after this long (s)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="stream progress until the job ends; exit 0 only if it completed",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.jobspec import JobSpec
    from oobleck.runtime.control.submission import submit_job

    at_least("--nodes", args.nodes, 0)
    if args.timeout_s <= 0:
        raise ConfigError(f"--timeout-s must be > 0, got {args.timeout_s}")
    job = JobSpec.from_path(args.config)
    host, port = daemon_address(args)
    token = daemon_token(args)

    def show(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    reply = submit_job(
        host,
        port,
        token,
        job,
        hostfile=args.hostfile,
        nodes=args.nodes,
        wait=args.wait,
        timeout_s=args.timeout_s,
        on_progress=show,
    )
    if reply["type"] == "rejected":
        raise ConfigError(f"master rejected the job: {reply.get('message')}")
    if reply["type"] == "finished":
        error = reply.get("error") or {}
        detail = f"; first worker error (node {error.get('node')}): {error.get('message')}" if error else ""
        show(f"{reply.get('job')} {reply['outcome']}{detail}")
        return 0 if reply["outcome"] == "completed" else EXIT_FAILED
    show(f"{reply.get('job')} accepted; run dir {reply.get('run_dir')}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck submit``; 0 accepted (or completed with --wait), 1 failed, 2 bad input or rejected."""
    return run_command(build_parser(), _run, argv)
