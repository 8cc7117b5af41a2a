"""``oobleck master`` / ``python -m oobleck.runtime.master``: run a job to completion, or serve as a daemon.

With ``--config`` the master launches one agent per hostfile line (or per Slurm node), runs the job
and exits 0 when every worker finished (1 if the job failed, 2 for bad input). Without it, the
master is a daemon that waits for ``oobleck submit``. ``--resume RUN_DIR`` restarts a master that
died on that run dir (same token, address and ports); its agents kept their workers training and
re-register, and the running generation is adopted without a re-plan.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from oobleck.cli._common import at_least, new_parser, run_command
from oobleck.errors import ConfigError

if TYPE_CHECKING:
    from oobleck.runtime.control.master import Master
    from oobleck.runtime.control.master_config import MasterConfig

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The master's flags."""
    parser = new_parser(
        "master",
        description="Run the elastic control plane: rendezvous store, agents, failure detection, membership.",
        example="python -m oobleck.runtime.master --hostfile examples/hosts.local4 "
        "--config examples/tiny_gpt2.yaml --run-dir runs/demo",
    )
    parser.add_argument(
        "--hostfile", help="one agent per line: HOST [slots=N] [port=P]; default: Slurm nodes"
    )
    parser.add_argument(
        "--config", help="job YAML; without it the master runs as a daemon for `oobleck submit`"
    )
    parser.add_argument("--run-dir", help="output folder (default: runs/<UTC time>)")
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="restart the dead master of RUN_DIR: same token, address and ports; adopts the running job",
    )
    parser.add_argument(
        "--resume-grace-s",
        type=float,
        default=30.0,
        help="with --resume: how long members may take to re-register before they count as lost (s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address; a routable one needs OOBLECK_TOKEN"
    )
    parser.add_argument("--port", type=int, default=0, help="control port (0: a free port, see master.json)")
    parser.add_argument(
        "--token-file",
        help="0600 file with the shared token (default: $OOBLECK_TOKEN, "
        "else a token generated into <run-dir>/token for this run)",
    )
    parser.add_argument("--heartbeat-interval-s", type=float, default=0.5, help="agent heartbeat period (s)")
    parser.add_argument(
        "--missed-heartbeats", type=int, default=3, help="silent periods before a node is dead"
    )
    parser.add_argument(
        "--register-timeout-s", type=float, default=120.0, help="longest wait for the expected agents (s)"
    )
    parser.add_argument("--timeout-s", type=float, default=None, help="fail the job after this long (s)")
    return parser


def _token(args: argparse.Namespace, run_dir: Path) -> bytes:
    from oobleck.runtime.control.server import check_bind
    from oobleck.runtime.control.token import (
        describe_source,
        generate_token_file,
        load_token,
        read_token_file,
    )

    token = load_token(args.token_file)
    check_bind(args.host, token_supplied=token is not None)
    if token is not None:
        logger.info("token from %s", describe_source(args.token_file))
        return token
    path = run_dir / "token"
    if path.exists():
        logger.info("reusing this run's token in %s (a re-run resumes from its checkpoints)", path)
        return read_token_file(path)
    logger.info("generated a token for this run in %s (mode 0600)", path)
    return generate_token_file(path)


def _run(args: argparse.Namespace) -> int:
    from oobleck.runtime.control.hostfile import hosts_from_slurm, parse_hostfile
    from oobleck.runtime.control.jobspec import JobSpec
    from oobleck.runtime.control.preflight import check_checkpoint_dir, check_data_inputs, check_run_dir

    logging.getLogger("oobleck").setLevel(logging.DEBUG if args.debug else logging.INFO)
    at_least("--missed-heartbeats", args.missed_heartbeats, 1)
    if args.heartbeat_interval_s <= 0:
        raise ConfigError(f"--heartbeat-interval-s must be > 0, got {args.heartbeat_interval_s}")
    if args.resume is not None:
        return _resume(args)
    job = JobSpec.from_path(args.config) if args.config else None
    hosts = parse_hostfile(args.hostfile) if args.hostfile else hosts_from_slurm()
    if job is not None and hosts is None:
        raise ConfigError("--hostfile: required outside a Slurm allocation (SLURM_JOB_NODELIST is unset)")
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}").resolve()
    check_run_dir(run_dir)
    if job is not None:
        from oobleck.runtime.control.job_preflight import check_job

        check_job(job.config, job.config_path, hosts or (), run_dir)
        check_checkpoint_dir(job.config, run_dir, source=job.config_path)
        check_data_inputs(job.config, source=job.config_path)
    if job is not None and hosts is not None:
        # NOTE: a stage spans devices of one node only; refuse a TP degree above the slots now,
        # not when the workers plan (hostfile slots are homogeneous, parse_hostfile checks it).
        try:
            job.config.tensor_parallel.check_fits(min(host.slots for host in hosts))
        except ConfigError as error:
            raise ConfigError(f"{job.config_path}: {error}") from None
    token = _token(args, run_dir)

    from oobleck.runtime.control.job import check_reachable, run_job

    if job is not None and hosts is not None:
        check_reachable(hosts, args.host)
    master = _start(args, run_dir, token, resume=False)
    if job is not None and hosts is not None:
        return run_job(master, job, hosts, slurm=args.hostfile is None, timeout_s=args.timeout_s)
    return _serve(master)


def _config(args: argparse.Namespace, run_dir: Path) -> MasterConfig:
    from oobleck.runtime.control.master_config import MasterConfig

    return MasterConfig(
        run_dir=run_dir,
        host=args.host,
        port=args.port,
        heartbeat_interval_s=args.heartbeat_interval_s,
        missed_heartbeats=args.missed_heartbeats,
        register_timeout_s=args.register_timeout_s,
        resume_grace_s=args.resume_grace_s,
    )


def _start(args: argparse.Namespace, run_dir: Path, token: bytes, *, resume: bool) -> Master:
    from oobleck.runtime.control.master import Master
    from oobleck.runtime.control.submission import serve_submission

    master = Master(_config(args, run_dir), token, submit_handler=serve_submission, resume=resume)
    logger.info("master at %s:%d, run dir %s", master.address, master.server.port, run_dir)
    return master


def _resume(args: argparse.Namespace) -> int:
    """Restart the master of ``--resume RUN_DIR`` where the dead one listened, with its token."""
    from oobleck.runtime.control.master_files import read_master_info
    from oobleck.runtime.control.preflight import check_run_dir

    if args.config or args.hostfile:
        raise ConfigError("--resume RUN_DIR takes the job from RUN_DIR; drop --config/--hostfile")
    run_dir = Path(args.resume).resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"--resume {args.resume}: no such run directory")
    check_run_dir(run_dir)
    info = read_master_info(run_dir)
    args.port = args.port or info.port
    if args.host == "127.0.0.1" and info.address not in ("127.0.0.1", "localhost"):
        args.host = info.address
    token = _token(args, run_dir)
    master = _start(args, run_dir, token, resume=True)
    if master.machine.job is None:
        return _serve(master)
    try:
        outcome = master.wait(args.timeout_s)
    finally:
        master.close()
    if outcome != "completed":
        logger.error("job %s; logs in %s", outcome, run_dir)
        return 1
    return 0


def _serve(master: Master) -> int:
    """Run as a daemon until SIGTERM or Ctrl-C."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        master.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``oobleck master``; returns the exit status (0 done, 1 job failed, 2 bad input)."""
    return run_command(build_parser(), _run, argv)
