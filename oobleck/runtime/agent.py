"""``python -m oobleck.runtime.agent --master HOST:PORT``: one node's agent, started by the master or by hand.

The token comes from ``OOBLECK_TOKEN`` or ``--token-file`` / ``OOBLECK_TOKEN_FILE`` (never a flag value).
Started by hand (xargs+ssh+tmux, mpirun, srun, a Kubernetes pod) it registers with the running
master: before the job starts it counts towards the expected nodes, afterwards it is a join.
With ``--keep`` it stays attached when a job ends and registers afresh for the daemon's next job.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from oobleck.cli._common import new_parser, run_command
from oobleck.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    """The agent's flags."""
    parser = new_parser(
        "agent",
        description="Register this node with an oobleck master and run its workers.",
        example="OOBLECK_TOKEN=... python -m oobleck.runtime.agent --master 10.0.0.1:29400 --slots 8",
    )
    parser.prog = "python -m oobleck.runtime.agent"
    parser.add_argument("--master", required=True, help="HOST:PORT of the master (see <run_dir>/master.json)")
    parser.add_argument("--slots", type=int, default=1, help="workers (devices) on this node")
    parser.add_argument(
        "--index", type=int, default=None, help="requested node id (the master's hostfile index)"
    )
    parser.add_argument("--run-dir", help="local run directory (default: the master's)")
    parser.add_argument("--token-file", help="0600 file with the shared token (default: $OOBLECK_TOKEN)")
    parser.add_argument(
        "--worker-module",
        default=os.environ.get("OOBLECK_WORKER_MODULE", "oobleck.runtime.worker"),
        help="module run per worker (env OOBLECK_WORKER_MODULE)",
    )
    parser.add_argument("--connect-timeout-s", type=float, default=60.0, help="keep retrying the master (s)")
    parser.add_argument(
        "--reconnect-timeout-s",
        type=float,
        default=120.0,
        help="after losing the master, keep the workers training and retry this long (s)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="stay attached after a job ends and serve the master's next job (a daemon's)",
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.agent import Agent, AgentConfig
    from oobleck.runtime.control.token import load_token

    logging.getLogger("oobleck").setLevel(logging.DEBUG if args.debug else logging.INFO)
    host, sep, port = args.master.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--master {args.master!r}: expected HOST:PORT, e.g. 127.0.0.1:29400")
    if args.slots < 1:
        raise ConfigError(f"--slots must be >= 1, got {args.slots}")
    token = load_token(args.token_file)
    if token is None:
        raise ConfigError("no token: set OOBLECK_TOKEN or pass --token-file (the master's <run_dir>/token)")
    os.environ.pop("OOBLECK_TOKEN", None)
    config = AgentConfig(
        master_host=host.strip("[]"),
        master_port=int(port),
        index=args.index,
        slots=args.slots,
        run_dir=Path(args.run_dir).resolve() if args.run_dir else None,
        worker_module=args.worker_module,
        connect_timeout_s=args.connect_timeout_s,
        reconnect_timeout_s=args.reconnect_timeout_s,
        keep=args.keep,
    )
    agent = Agent(config, token)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return agent.run()
    finally:
        agent.kill_workers()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent; returns its exit status (0 shutdown, 1 node failure or master lost, 2 bad input)."""
    return run_command(build_parser(), _run, argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(main())
