"""``oobleck submit`` / ``python -m oobleck.runtime.submit``: hand a job to a running daemon master."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from oobleck.cli._common import at_least, new_parser, run_command
from oobleck.errors import ConfigError

logger = logging.getLogger(__name__)

EXIT_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    """The submitter's flags."""
    parser = new_parser(
        "submit",
        description="Submit a training job to a master started without --config (daemon mode).",
        example="oobleck submit --run-dir runs/daemon --config examples/tiny_gpt2.yaml "
        "--hostfile examples/hosts.local4 --wait",
    )
    parser.add_argument("--config", required=True, help="job YAML")
    parser.add_argument("--master", help="HOST:PORT of the master (default: from <run-dir>/master.json)")
    parser.add_argument(
        "--run-dir", help="the daemon's run directory (master.json, and token when generated)"
    )
    parser.add_argument("--hostfile", help="agents for the master to launch, one per line")
    parser.add_argument(
        "--nodes", type=int, default=0, help="without --hostfile: hand-started agents to wait for"
    )
    parser.add_argument(
        "--token-file", help="0600 token file (default: $OOBLECK_TOKEN, else <run-dir>/token)"
    )
    parser.add_argument(
        "--wait", action="store_true", help="stay until the job ends; exit 0 only if it completed"
    )
    return parser


def _address(args: argparse.Namespace) -> tuple[str, int]:
    if args.master:
        host, sep, port = args.master.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"--master {args.master!r}: expected HOST:PORT")
        return host, int(port)
    if not args.run_dir:
        raise ConfigError("give --master HOST:PORT or --run-dir of the daemon master")
    info = Path(args.run_dir) / "master.json"
    if not info.is_file():
        raise ConfigError(f"--run-dir {args.run_dir}: no master.json; is a master running there?")
    data = json.loads(info.read_text(encoding="utf-8"))
    return str(data["address"]), int(data["port"])


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.jobspec import JobSpec
    from oobleck.runtime.control.submission import submit_job
    from oobleck.runtime.control.token import load_token

    at_least("--nodes", args.nodes, 0)
    job = JobSpec.from_path(args.config)
    host, port = _address(args)
    token_file = args.token_file
    if token_file is None and args.run_dir and (Path(args.run_dir) / "token").is_file():
        token_file = str(Path(args.run_dir) / "token")
    token = load_token(token_file)
    if token is None:
        raise ConfigError("no token: set OOBLECK_TOKEN or pass --token-file")
    reply = submit_job(host, port, token, job, hostfile=args.hostfile, nodes=args.nodes, wait=args.wait)
    if reply["type"] == "rejected":
        raise ConfigError(f"master rejected the job: {reply.get('message')}")
    if reply["type"] == "finished":
        sys.stdout.write(f"job {reply['outcome']}\n")
        return 0 if reply["outcome"] == "completed" else EXIT_FAILED
    sys.stdout.write(f"job accepted; run dir {reply.get('run_dir')}\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck submit``; 0 accepted (or completed with --wait), 1 failed, 2 bad input or rejected."""
    return run_command(build_parser(), _run, argv)
